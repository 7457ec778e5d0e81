/* Tokenizer: Hugging Face tokenizer.json (byte-level BPE of Llama 3 / GPT-2 style, and the
 * SentencePiece-style BPE of Llama 2 / Mistral), tokenizer_config.json (special tokens, chat
 * template), streaming detokenization and chat-template rendering. Exact against HF
 * `tokenizers` and `transformers.apply_chat_template`. */
#ifndef KILN_TOKENIZER_TOKENIZER_H
#define KILN_TOKENIZER_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

struct kiln_tokenizer;

/* DIR holds tokenizer.json and optionally tokenizer_config.json (chat template, bos/eos,
 * add_bos_token) and generation_config.json (eos ids). A chat template the renderer cannot
 * handle is an error here, not at request time. */
enum kiln_status kiln_tokenizer_load(const char *dir, struct kiln_tokenizer **out,
                                     struct kiln_error *err);
void kiln_tokenizer_free(struct kiln_tokenizer *tok);

int32_t kiln_tokenizer_vocab_size(const struct kiln_tokenizer *tok); /* incl. added tokens */
int32_t kiln_tokenizer_bos(const struct kiln_tokenizer *tok);        /* -1 when none */
/* Every end-of-sequence id (Llama 3.1: 128001, 128008, 128009); returns the count. */
int kiln_tokenizer_eos(const struct kiln_tokenizer *tok, const int32_t **ids);
bool kiln_tokenizer_is_special(const struct kiln_tokenizer *tok, int32_t id);
/* The id of a token given as its string ("<|eot_id|>", or a vocabulary entry in the file's own
 * form, e.g. "Ġthe"); -1 when there is none. */
int32_t kiln_tokenizer_token_id(const struct kiln_tokenizer *tok, const char *token);

/* The bytes token id stands for in decoded output (a byte-fallback <0xXX> token: that byte;
 * join-space decoders: without the joining space); NULL when the id is unused or out of range.
 * Used by the constraint engine to match tokens byte by byte. */
const char *kiln_tokenizer_token_bytes(const struct kiln_tokenizer *tok, int32_t id, size_t *len);

/* text (len bytes, any bytes) -> ids; add_special adds what the post-processor adds (BOS).
 * *ids is malloc'ed; the caller frees it. Invalid UTF-8 is first replaced by U+FFFD (one per
 * maximal ill-formed subpart, as Python's errors="replace" hands such bytes to HF). Text from a
 * chat template already spells BOS: encode it with add_special=false. Thread-safe. */
enum kiln_status kiln_tokenizer_encode(const struct kiln_tokenizer *tok, const char *text,
                                       size_t len, bool add_special, int32_t **ids, size_t *n,
                                       struct kiln_error *err);
/* ids -> text (malloc'ed, NUL-terminated); invalid UTF-8 becomes U+FFFD as HF does. */
enum kiln_status kiln_tokenizer_decode(const struct kiln_tokenizer *tok, const int32_t *ids,
                                       size_t n, bool skip_special, char **text, size_t *len,
                                       struct kiln_error *err);

/* Streaming detokenizer: push ids one at a time, get text deltas that never split a UTF-8
 * character; the concatenation of all deltas plus the final flush equals a one-shot decode. */
struct kiln_detok;
struct kiln_detok *kiln_detok_create(const struct kiln_tokenizer *tok, bool skip_special);
void kiln_detok_free(struct kiln_detok *d);
/* Appends the new text (possibly empty) to *out (malloc'ed, NUL-terminated, caller frees):
 * *out == NULL starts a new string, else *out and *len are an earlier result to extend. Ids outside
 * the vocabulary are KILN_ERR_INVALID. One detok per sequence; not shared between threads. */
enum kiln_status kiln_detok_push(struct kiln_detok *d, int32_t id, char **out, size_t *len,
                                 struct kiln_error *err);
/* Emits what is held back (incomplete UTF-8 at the end becomes U+FFFD). */
enum kiln_status kiln_detok_flush(struct kiln_detok *d, char **out, size_t *len,
                                  struct kiln_error *err);

/* Chat template: messages_json is a JSON array of {"role","content",...}; extra_json (may be
 * NULL) is an object of more template variables (tools, date_string, ...). Output malloc'ed. */
bool kiln_tokenizer_has_chat_template(const struct kiln_tokenizer *tok);
enum kiln_status kiln_tokenizer_apply_chat_template(const struct kiln_tokenizer *tok,
                                                    const char *messages_json,
                                                    bool add_generation_prompt,
                                                    const char *extra_json, char **out, size_t *len,
                                                    struct kiln_error *err);
/* Replaces the model's template (serve --chat-template); checked like at load. */
enum kiln_status kiln_tokenizer_set_chat_template(struct kiln_tokenizer *tok, const char *source,
                                                  struct kiln_error *err);

#endif
