"""SRRS vhost-user-blk (docs/architecture.md, Exports): QEMU VMs' disks served from bdevs.

    proto.py    wire format shared by both sides (requests, structs, fd passing)
    device.py   VhostBlkDevice (one socket, one front end at a time, reconnect)
                and VhostService (devices of a controller, vrings round-robin)
    vq.c        data plane: memory table, split virtqueues, virtio-blk requests
                zero-copy into the bdev, inflight region (C API: vhost.h)
    client.c    C driver side (plays the VM) for tests and `srrs bench vhost`;
    client.py   its handshake (VhostClient)
    config.py   [[vhost]] entries; rpc.py: vhost_create/delete/list;
    service.py  start(ctl, confs) for the controller; bench.py: `srrs bench vhost`
"""
