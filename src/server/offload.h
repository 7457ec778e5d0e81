/* Work off the event loop: a small pool of threads runs work(arg), then done(arg) runs on the
 * loop thread. The server hands it what would hold the loop for more than a few milliseconds
 * (parsing and tokenizing a large request body), so one large request never delays another's
 * first byte. It never touches server state itself; work() must only read what is immutable
 * while the server runs (the tokenizer, the limits) and write its own arg. */
#ifndef KILN_SERVER_OFFLOAD_H
#define KILN_SERVER_OFFLOAD_H

#include <stdbool.h>

struct event_base;
struct kiln_offload;

struct kiln_offload *kiln_offload_create(struct event_base *base, int n_threads);
/* Queues a job; false when out of memory (nothing queued). */
bool kiln_offload_run(struct kiln_offload *o, void (*work)(void *arg), void (*done)(void *arg),
                      void *arg);
/* Joins the threads (a job being worked on is finished first), then calls done for every job
 * left, queued or finished, so their args are freed: done must check whether the server is
 * closing. */
void kiln_offload_free(struct kiln_offload *o);

#endif
