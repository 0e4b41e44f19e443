/*
 * The transport floor for the NVMe/TCP benchmark: a plain TCP ping-pong on
 * loopback with the same message sizes as the NVMe/TCP exchange (request
 * capsule out, data + response back), both sides busy-polling non-blocking
 * sockets like the reactors do, or the server blocking in recv (one recv and
 * one send per exchange: the syscall floor). Not used on any data path.
 */
#include "nvmf/nvmf_int.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

struct pp_side {
    int fd;
    uint32_t in_len, out_len;
    volatile int *stop;
    int cpu;
    int flags; /* MSG_DONTWAIT (busy-polled) or 0 (blocking) */
};

static int send_full(int fd, const uint8_t *b, size_t n, volatile int *stop, int flags)
{
    while (n && !*stop) {
        ssize_t s = send(fd, b, n, flags | MSG_NOSIGNAL);
        if (s > 0) {
            b += s;
            n -= (size_t)s;
        } else if (s < 0 && errno != EAGAIN && errno != EINTR) {
            return -1;
        }
    }
    return n ? -1 : 0;
}

static int recv_full(int fd, uint8_t *b, size_t n, volatile int *stop, int flags)
{
    while (n && !*stop) {
        ssize_t s = recv(fd, b, n, flags);
        if (s > 0) {
            b += s;
            n -= (size_t)s;
        } else if (s == 0 || (errno != EAGAIN && errno != EINTR)) {
            return -1;
        }
    }
    return n ? -1 : 0;
}

static void *pp_server(void *arg)
{
    struct pp_side *s = arg;
    srrs_pin_self(s->cpu);
    uint8_t *in = malloc(s->in_len), *out = calloc(1, s->out_len);
    while (in && out && !*s->stop) {
        if (recv_full(s->fd, in, s->in_len, s->stop, s->flags) ||
            send_full(s->fd, out, s->out_len, s->stop, s->flags))
            break;
    }
    free(in);
    free(out);
    return NULL;
}

int srrs_tcp_pingpong(uint32_t req_len, uint32_t resp_len, uint32_t qd, double seconds,
                      int server_cpu, int client_cpu, int server_blocks,
                      struct srrs_bench_result *out)
{
    if (!req_len || !resp_len || !qd || qd > 1024 || seconds <= 0 || !out)
        return srrs_err(-EINVAL, "pingpong: bad arguments");
    srrs_ticks_init();
    memset(out, 0, sizeof(*out));
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof(a)) || listen(ls, 1) ||
        getsockname(ls, (struct sockaddr *)&a, &al)) {
        if (ls >= 0)
            close(ls);
        return srrs_err(-errno, "pingpong: listen: %s", strerror(errno));
    }
    int cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (cfd < 0 || connect(cfd, (struct sockaddr *)&a, sizeof(a))) {
        close(ls);
        if (cfd >= 0)
            close(cfd);
        return srrs_err(-errno, "pingpong: connect: %s", strerror(errno));
    }
    int sfd = accept(ls, NULL, NULL);
    close(ls);
    int one = 1;
    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(sfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    volatile int stop = 0;
    struct pp_side srv = {sfd, req_len, resp_len, &stop, server_cpu,
                          server_blocks ? 0 : MSG_DONTWAIT};
    pthread_t th;
    pthread_create(&th, NULL, pp_server, &srv);
    pthread_setname_np(th, "srrs-pingpong"); /* ci/bench-syscalls finds the server by name */
    srrs_pin_self(client_cpu);
    uint8_t *req = calloc(1, req_len), *resp = malloc(resp_len);
    uint64_t *start = calloc(qd, sizeof(uint64_t));
    uint32_t nb = 4096;
    uint64_t *hist = calloc(nb, sizeof(uint64_t)); /* 0.25 us buckets up to ~1 ms */
    uint64_t n = 0, lat_sum = 0;
    uint64_t t0 = srrs_ticks(), end = t0 + srrs_us_to_ticks((uint64_t)(seconds * 1e6));
    int rc = 0;
    for (uint32_t i = 0; i < qd && !rc; i++) {
        start[i] = srrs_ticks();
        rc = send_full(cfd, req, req_len, &stop, MSG_DONTWAIT);
    }
    uint32_t head = 0, inflight = qd;
    while (!rc && inflight) {
        rc = recv_full(cfd, resp, resp_len, &stop, MSG_DONTWAIT);
        uint64_t now = srrs_ticks();
        if (rc)
            break;
        uint64_t lat = now - start[head];
        lat_sum += lat;
        uint64_t b = srrs_ticks_to_ns(lat) / 250;
        hist[b < nb ? b : nb - 1]++;
        n++;
        if (now >= end) {
            inflight--;
        } else {
            start[head] = srrs_ticks();
            rc = send_full(cfd, req, req_len, &stop, MSG_DONTWAIT);
        }
        head = (head + 1) % qd; /* responses come back in order */
    }
    double el = (double)srrs_ticks_to_ns(srrs_ticks() - t0) / 1e9;
    stop = 1;
    shutdown(cfd, SHUT_RDWR);
    pthread_join(th, NULL);
    close(cfd);
    close(sfd);
    out->ios = n;
    out->bytes = n * (uint64_t)(req_len > resp_len ? req_len : resp_len);
    out->elapsed_s = el;
    out->iops = (double)n / el;
    out->mibps = (double)out->bytes / el / 1048576.0;
    out->lat_avg_us = n ? (double)srrs_ticks_to_ns(lat_sum / n) / 1000.0 : 0;
    uint64_t acc = 0;
    double want[3] = {0.5, 0.99, 0.999};
    double *dst[3] = {&out->lat_p50_us, &out->lat_p99_us, &out->lat_p999_us};
    for (int k = 0; k < 3; k++) {
        acc = 0;
        for (uint32_t i = 0; i < nb; i++) {
            acc += hist[i];
            if ((double)acc >= want[k] * (double)n) {
                *dst[k] = (i + 0.5) * 0.25;
                break;
            }
        }
    }
    free(req);
    free(resp);
    free(start);
    free(hist);
    return rc && !n ? srrs_err(-EIO, "pingpong: connection failed") : 0;
}
