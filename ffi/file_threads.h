/*
 * The file bdev's second I/O engine: a small pool of worker threads per
 * reactor doing blocking syscalls (docs/architecture.md, File I/O engines).
 * Private to bdev_file.c and file_threads.c (not a contract header).
 */
#ifndef SRRS_FILE_THREADS_H
#define SRRS_FILE_THREADS_H

#include "srrs_int.h"

struct srrs_tpool;

/* Worker thread: performs io with blocking syscalls, returns 0 or -errno. */
typedef int (*srrs_tpool_fn)(struct srrs_io *io);

/* Reactor thread: this reactor's pool (created on first use, one per
 * reactor, shared by every bdev on it), one reference more. NULL + srrs_err. */
struct srrs_tpool *srrs_tpool_get(struct srrs_reactor *r, srrs_tpool_fn fn);
/* Reactor thread, or the control thread once the reactor has stopped: drops
 * a reference; the last waits for the pool's I/O and joins its workers. */
void srrs_tpool_put(struct srrs_tpool *tp);
/* Reactor thread: queues io for a worker; it completes on this reactor
 * through srrs_io_complete(io, fn(io)). No lock, malloc or syscall here. */
void srrs_tpool_submit(struct srrs_tpool *tp, struct srrs_io *io);
/* Workers running now (they are started as the queue depth asks). */
int srrs_tpool_workers(struct srrs_tpool *tp);

#endif
