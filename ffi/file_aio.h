/*
 * The file bdev's Linux native AIO engine: one kernel AIO context per reactor
 * (docs/architecture.md, File I/O engines). Private to bdev_file.c and
 * file_aio.c (not a contract header).
 */
#ifndef SRRS_FILE_AIO_H
#define SRRS_FILE_AIO_H

#include "srrs_int.h"

struct srrs_aio;

/* Reactor thread: io is done. res: bytes moved, or -errno. submitted: false
 * when io_submit refused the request itself (nothing reached the file). */
typedef void (*srrs_aio_fn)(struct srrs_io *io, long long res, bool submitted);

/* Any thread: 0 if this process may set up an AIO context of the size the
 * reactors use, else why not as a -errno (ENOSYS: no AIO in the kernel or
 * qemu-user; EPERM/EACCES: seccomp; EAGAIN: fs.aio-max-nr reached). */
int srrs_aio_probe(void);

/* Reactor thread: the descriptor an I/O goes to. */
typedef int (*srrs_aio_fd_fn)(struct srrs_io *io);

/* Reactor thread: this reactor's context (set up on first use, shared by
 * every bdev on it; done and fd_of are the same for all), one reference
 * more. NULL + srrs_err (io_setup's errno: EAGAIN when fs.aio-max-nr is
 * reached). */
struct srrs_aio *srrs_aio_get(struct srrs_reactor *r, srrs_aio_fn done, srrs_aio_fd_fn fd_of);
/* Reactor thread, or the control thread once the reactor has stopped: drops
 * a reference; the last reaps what is in flight and destroys the context. */
void srrs_aio_put(struct srrs_aio *a);
/* Reactor thread: queues io (READ or WRITE through its iovecs at its
 * offset, or FLUSH as fdatasync) on fd_of(io); submitted with the others of
 * this poll in one io_submit. No lock, malloc or syscall here. */
void srrs_aio_submit(struct srrs_aio *a, struct srrs_io *io);
/* Reactor thread: false once the kernel has refused IOCB_CMD_FDSYNC (before
 * Linux 4.18): flushes then take another path. */
bool srrs_aio_has_fdsync(const struct srrs_aio *a);

#endif
