"""A mirror is attached to its link (the reactor sees it) before its bdev is
registered. A status call looking mirrors up by name in that window read the
bdev's name through a NULL pointer and took the controller down (SIGSEGV on
the reactor; seen as a restarted controller that "never came back" in the
CSI and move tests). Here one thread looks mirrors up by name as fast as it
can while another creates and deletes them; the child process must survive.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import sys, threading, time
    from srrs.ffi.binding import Core, check, ffi, lib

    tmp, rounds = sys.argv[1], int(sys.argv[2])
    core = Core(reactors=1)
    o = ffi.new("struct srrs_mirror_link_opts *")
    o.reactor = 0
    o.node = 0
    o.listen_host = b"127.0.0.1"
    o.listen_port = 0
    o.peer_host = b"127.0.0.1"
    o.peer_port = 9          # nobody: the link stays down, mirrors still attach
    o.ping_ms = 20
    o.timeout_ms = 2000
    pl = ffi.new("struct srrs_mirror_link **")
    check(lib.srrs_mirror_link_create(core.ptr, o, pl), "link")
    link = pl[0]
    for i in range(8):
        core.bdev_create_malloc(f"r{i}", 1 << 20)
    stop = threading.Event()
    looked = [0]

    def look():
        mi = ffi.new("struct srrs_mirror_info *")
        while not stop.is_set():
            lib.srrs_mirror_get_info(link, b"nobody", mi)   # walks every attached mirror
            looked[0] += 1

    t = threading.Thread(target=look)
    t.start()
    try:
        for n in range(rounds):
            for i in range(8):
                check(lib.srrs_mirror_create(link, f"m{i}".encode(), f"r{i}".encode(), i,
                                             1 << 16, f"{tmp}/m{i}.bitmap".encode()), "mirror")
            for i in range(8):
                core.bdev_delete(f"m{i}")
    finally:
        stop.set()
        t.join()
    check(lib.srrs_mirror_link_destroy(pl))
    print("ok", looked[0])
""")


def test_status_while_mirrors_are_created_does_not_crash(tmp_path):
    r = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), "300"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"child died with {r.returncode}:\n{r.stdout}\n{r.stderr}"
    assert r.stdout.startswith("ok"), r.stdout + r.stderr
    assert int(r.stdout.split()[1]) > 0, "the lookups never ran"
