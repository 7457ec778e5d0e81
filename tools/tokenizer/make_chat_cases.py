#!/usr/bin/env python3
"""Writes tests/fixtures/tokenizer/chat_cases.json: conversations x chat templates x options,
the inputs whose renderings make_fixtures.py records with transformers.apply_chat_template.
usage: make_chat_cases.py OUT.json"""
import json
import sys

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather for a city, in °C.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name, e.g. \"Paris\""},
        "days": {"type": "integer", "minimum": 1, "maximum": 7.5, "default": 1},
        "units": {"type": "string", "enum": ["metric", "imperial"]}},
        "required": ["city"]}}},
    {"type": "function", "function": {"name": "search", "description": "Web search <b>&</b> more",
                                      "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": []}}}]

U = "user"
A = "assistant"
S = "system"
CONV = {
    "one_turn": [{"role": U, "content": "Hello!"}],
    "system": [{"role": S, "content": "You are a helpful assistant.  "},
               {"role": U, "content": "What is the capital of France?"}],
    "multi": [{"role": S, "content": "Be brief."}, {"role": U, "content": "Hi"},
              {"role": A, "content": " Hello! How can I help?\n"},
              {"role": U, "content": "Tell me a joke about 🐈 and 中文."}],
    "multi_nosys": [{"role": U, "content": "a"}, {"role": A, "content": "b"},
                    {"role": U, "content": "  spaced  \n\n"}, {"role": A, "content": "done"}],
    "unicode": [{"role": U, "content": "Ünïcödé \"quotes\" 'single' \\ back\\slash\ttab\n<|eot_id|> {{ not jinja }} {% raw %}"}],
    "bad_alternation": [{"role": U, "content": "one"}, {"role": U, "content": "two"}],
    "tool_turns": [{"role": S, "content": "You can call tools."},
                   {"role": U, "content": "Weather in Paris for 3 days?"},
                   {"role": A, "content": "", "tool_calls": [{"type": "function", "function": {
                       "name": "get_weather", "arguments": {"city": "Paris", "days": 3}}}]},
                   {"role": "tool", "content": "{\"temp\": 21.5, \"sky\": \"clear\"}"},
                   {"role": A, "content": "It is 21.5 °C and clear."},
                   {"role": U, "content": "Thanks"}],
    "tool_string_args": [{"role": U, "content": "Search for kiln"},
                         {"role": A, "content": None, "tool_calls": [
                             {"type": "function", "function": {"name": "search", "arguments": "{\"q\": \"kiln\"}"}},
                             {"type": "function", "function": {"name": "search", "arguments": "{\"q\": \"kilns\"}"}}]},
                         {"role": "tool", "content": "result one"}, {"role": "tool", "content": "result two"},
                         {"role": A, "content": "Found two results."}],
    "think": [{"role": U, "content": "2+2?"},
              {"role": A, "content": "<think>\nsimple math\n</think>\n\nIt is 4."},
              {"role": U, "content": "and 3+3?"}],
    "content_parts": [{"role": S, "content": [{"type": "text", "text": "Sys in parts"}]},
                      {"role": U, "content": [{"type": "image"}, {"type": "text", "text": " Describe this. "}]},
                      {"role": A, "content": [{"type": "text", "text": "A cat."}]}],
    "empty": [],
    # kiln's tool calling (issue 15): a builtin tool call answered by ipython, a dict result
    "builtin_call": [{"role": U, "content": "Search the weather in Menlo Park"},
                     {"role": A, "content": None, "tool_calls": [{"type": "function", "function": {
                         "name": "brave_search", "arguments": {"query": "Menlo Park weather"}}}]},
                     {"role": "ipython", "content": "{\"result\": \"sunny\"}"},
                     {"role": A, "content": "It is sunny."}],
    "tool_dict_result": [{"role": U, "content": "Weather in Paris?"},
                         {"role": A, "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
                             "name": "get_weather", "arguments": {"city": "Paris"}}}]},
                         {"role": "tool", "tool_call_id": "call_1", "content": {"temp": 21}}],
}

CASES = []


def add(tok, conv, template=None, extra=None, gens=(True, False)):
    for g in gens:
        name = "%s%s/%s/%s" % (tok, "+" + template.split(".")[0] if template else "", conv, "gen" if g else "nogen")
        if extra:
            name += "/" + "+".join(sorted(extra))
        CASES.append({"name": name, "tokenizer": tok, "template": template, "conversation": conv,
                      "add_generation_prompt": g, "extra": extra or {}})


for c in ["one_turn", "system", "multi", "multi_nosys", "unicode"]:
    add("llama3_1", c)
    add("qwen3", c)
    add("gemma3", c)
    add("deepseek_v3", c)
    add("llama2", c, "llama2_chat.jinja")
    add("llama3_1", c, "llama3_1_tools.jinja")
    add("llama3_1", c, "features.jinja")
add("llama3_1", "empty")
add("qwen3", "think")
add("qwen3", "think", extra={"enable_thinking": False})
add("qwen3", "tool_turns", extra={"tools": TOOLS})
add("qwen3", "tool_string_args", extra={"tools": TOOLS})
add("qwen3", "multi", extra={"tools": TOOLS})
add("deepseek_v3", "tool_string_args")
add("gemma3", "content_parts")
add("gemma3", "bad_alternation")
add("llama2", "bad_alternation", "llama2_chat.jinja")
add("llama3_1", "tool_turns", "llama3_1_tools.jinja", {"tools": TOOLS})
add("llama3_1", "tool_turns", "llama3_1_tools.jinja", {"tools": TOOLS, "tools_in_user_message": False, "date_string": "25 Nov 2026"})
add("llama3_1", "system", "llama3_1_tools.jinja", {"date_string": "01 Jan 2026"})
add("llama3_1", "tool_turns", "llama3_1_tools.jinja", {"builtin_tools": ["brave_search", "code_interpreter"], "tools": TOOLS})
add("llama3_1", "tool_string_args", "llama3_1_tools.jinja", {"tools": TOOLS})
add("llama3_1", "builtin_call", "llama3_1_tools.jinja", {"builtin_tools": ["brave_search", "wolfram_alpha"], "tools": TOOLS})
add("llama3_1", "tool_dict_result", "llama3_1_tools.jinja", {"custom_tools": TOOLS, "tools_in_user_message": False})
add("llama3_1", "tool_dict_result", "llama3_1_tools.jinja", {"tools": TOOLS, "date_string": "07 Dec 2026"})
add("llama3_1", "tool_turns", "features.jinja")
add("llama3_1", "content_parts", "features.jinja")
add("llama3_1", "empty", "features.jinja")

json.dump({"conversations": CONV, "cases": CASES}, open(sys.argv[1], "w"), ensure_ascii=False, indent=1)
print("%d cases" % len(CASES))
