/* bench_http: the HTTP layer's cost per request, without generation. C threads, each on its
 * own keep-alive connection, send one request after another for a fixed time and time each
 * answer; prints requests/s and latency percentiles.
 *
 *   bench_http PORT [SECONDS=5] [CONNECTIONS=4] [health|tokenize|chunked]
 *
 * health: GET /health. tokenize: POST /tokenize with a 1 KB prompt (the body read, the JSON
 * parse and the tokenizer). chunked: the same body as three chunks. Run it against a
 * `kiln serve` on loopback; compare builds on the same machine, back to back. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct worker {
    int port;
    double seconds;
    const char *req;
    size_t req_len;
    double *lat; /* ms, one per request */
    size_t n, cap;
    int errors;
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Reads one response (head + Content-Length body); 0 on success. */
static int read_response(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, buf + n, cap - n - 1);
        if (r <= 0) return -1;
        n += (size_t)r;
        buf[n] = 0;
        char *end = strstr(buf, "\r\n\r\n");
        if (!end) continue;
        char *cl = strcasestr(buf, "\r\nContent-Length:");
        if (!cl) return -1;
        size_t want = (size_t)(end + 4 - buf) + strtoul(cl + 17, NULL, 10);
        if (n >= want) return strncmp(buf, "HTTP/1.1 200", 12) ? -1 : 0;
    }
}

static void *run(void *arg)
{
    struct worker *w = arg;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)w->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        perror("connect");
        exit(1);
    }
    static _Thread_local char buf[1 << 16];
    double end = now() + w->seconds;
    while (now() < end) {
        double t0 = now();
        if (write(fd, w->req, w->req_len) != (ssize_t)w->req_len ||
            read_response(fd, buf, sizeof buf)) {
            w->errors++;
            break;
        }
        if (w->n == w->cap) {
            w->cap = w->cap ? 2 * w->cap : 4096;
            w->lat = realloc(w->lat, w->cap * sizeof *w->lat);
            if (!w->lat) exit(1);
        }
        w->lat[w->n++] = (now() - t0) * 1e3;
    }
    close(fd);
    return NULL;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr,
                "usage: bench_http PORT [SECONDS] [CONNECTIONS] [health|tokenize|chunked]\n");
        return 2;
    }
    int port = atoi(argv[1]);
    double seconds = argc > 2 ? atof(argv[2]) : 5;
    int conns = argc > 3 ? atoi(argv[3]) : 4;
    const char *mode = argc > 4 ? argv[4] : "health";
    static char req[8192], prompt[1100];
    for (int i = 0; i < 1024; i++) prompt[i] = "the quick brown fox "[i % 20];
    char body[1200];
    int blen = snprintf(body, sizeof body, "{\"prompt\":\"%s\"}", prompt);
    int len;
    if (!strcmp(mode, "health")) {
        len = snprintf(req, sizeof req, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    } else if (!strcmp(mode, "tokenize")) {
        len = snprintf(req, sizeof req,
                       "POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       "Content-Length: %d\r\n\r\n%s",
                       blen, body);
    } else {
        int a = blen / 3, b = blen / 3;
        len = snprintf(req, sizeof req,
                       "POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       "Transfer-Encoding: chunked\r\n\r\n%x\r\n%.*s\r\n%x\r\n%.*s\r\n%x\r\n%s\r\n"
                       "0\r\n\r\n",
                       a, a, body, b, b, body + a, blen - a - b, body + a + b);
    }
    struct worker *w = calloc((size_t)conns, sizeof *w);
    pthread_t *t = calloc((size_t)conns, sizeof *t);
    for (int i = 0; i < conns; i++) {
        w[i] =
            (struct worker){.port = port, .seconds = seconds, .req = req, .req_len = (size_t)len};
        pthread_create(&t[i], NULL, run, &w[i]);
    }
    size_t total = 0;
    int errors = 0;
    for (int i = 0; i < conns; i++) {
        pthread_join(t[i], NULL);
        total += w[i].n;
        errors += w[i].errors;
    }
    double *all = malloc((total ? total : 1) * sizeof *all);
    size_t k = 0;
    for (int i = 0; i < conns; i++)
        for (size_t j = 0; j < w[i].n; j++) all[k++] = w[i].lat[j];
    qsort(all, total, sizeof *all, cmp);
    if (!total) {
        fprintf(stderr, "no answers (%d errors)\n", errors);
        return 1;
    }
    printf("%s: %d connections, %.0f req/s, latency p50 %.3f p99 %.3f max %.3f ms, %d errors\n",
           mode, conns, (double)total / seconds, all[total / 2], all[(size_t)(total * 0.99)],
           all[total - 1], errors);
    return errors != 0;
}
