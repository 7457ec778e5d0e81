#!/usr/bin/env bash
# kiln tokenize / kiln template from the command line: output forms, exit codes, errors.
set -u
kiln=$1
tok=${KILN_TOKENIZERS:-$KILN_BINARY_DIR/tokenizers}
l3=$tok/llama3_1
pass=0
fail=0
check() { # name expected actual
  if [ "$2" == "$3" ]; then pass=$((pass + 1)); else
    fail=$((fail + 1))
    printf 'FAIL %s\n  want: %q\n  got:  %q\n' "$1" "$2" "$3"
  fi
}
check "tokenize" "[128000,9906,1917,0]" "$(printf 'Hello world!' | "$kiln" tokenize "$l3")"
check "tokenize --no-special" "[9906,1917,0]" "$(printf 'Hello world!' | "$kiln" tokenize "$l3" --no-special)"
check "tokenize special text" "[128000,9906,220,128009]" "$(printf 'Hello <|eot_id|>' | "$kiln" tokenize "$l3")"
check "tokenize --jsonl" $'[9906]\n[14957,0]\n[]' "$(printf '"Hello"\n"world!"\n""\n' | "$kiln" tokenize "$l3" --jsonl --no-special)"
check "tokenize invalid utf-8" "$(printf 'x\xef\xbf\xbdx' | "$kiln" tokenize "$l3" --no-special)" \
  "$(printf 'x\xffx' | "$kiln" tokenize "$l3" --no-special)"
check "decode" "Hello world!" "$(printf '[128000,9906,1917,0]' | "$kiln" tokenize "$l3" --decode --skip-special)"
check "decode --jsonl" $'"<|begin_of_text|>Hello"\n"\xef\xbf\xbd"' "$(printf '[128000,9906]\n[226]\n' | "$kiln" tokenize "$l3" --decode --jsonl)"
want=$'<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n'
got=$(printf '{"messages":[{"role":"user","content":"  Hi there "}],"add_generation_prompt":true}' | "$kiln" template "$l3"; echo x)
check "template" "${want}x" "$got"
got=$(printf '{"messages":[{"role":"user","content":"a"},{"role":"user","content":"b"}]}' | "$kiln" template "$tok/gemma3" 2>&1 >/dev/null)
check "template raise_exception" "kiln template: Conversation roles must alternate user/assistant/user/assistant/..." "$got"
printf '{%% for m in messages %%}[{{ m.role | upper }}]{%% endfor %%}' >"${TMPDIR:-/tmp}/kiln_cli_tpl.$$"
check "template --chat-template" "[USER][ASSISTANT]" "$(printf '{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]}' | "$kiln" template "$l3" --chat-template "${TMPDIR:-/tmp}/kiln_cli_tpl.$$")"
printf '{{ x | nope }}' >"${TMPDIR:-/tmp}/kiln_cli_tpl.$$"
"$kiln" template "$l3" --chat-template "${TMPDIR:-/tmp}/kiln_cli_tpl.$$" </dev/null >/dev/null 2>&1
check "bad template exit" "1" "$?"
rm -f "${TMPDIR:-/tmp}/kiln_cli_tpl.$$"
"$kiln" tokenize /nonexistent-dir </dev/null >/dev/null 2>&1
check "missing dir exit" "1" "$?"
"$kiln" tokenize >/dev/null 2>&1
check "usage exit" "2" "$?"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
