/*
 * CRC32C (Castagnoli, reflected polynomial 0x82F63B78): SSE4.2 / ARMv8 CRC
 * instructions when the CPU has them, a slicing-by-8 table otherwise.
 * Convention: srrs_crc32c(0, buf, len) is the standard CRC32C of buf
 * (initial ~0, final xor ~0), and calls chain: crc32c(crc32c(0,a),b) == crc32c(0,a||b).
 */
#include "srrs_int.h"

#include <pthread.h>
#include <string.h>

static uint32_t table[8][256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void table_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xff];
}

uint32_t srrs_crc32c_sw(uint32_t crc, const void *buf, size_t len)
{
    pthread_once(&table_once, table_init);
    const uint8_t *p = buf;
    crc = ~crc;
    while (len && ((uintptr_t)p & 7)) {
        crc = (crc >> 8) ^ table[0][(crc ^ *p++) & 0xff];
        len--;
    }
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        v ^= crc;
        crc = table[7][v & 0xff] ^ table[6][(v >> 8) & 0xff] ^ table[5][(v >> 16) & 0xff] ^
              table[4][(v >> 24) & 0xff] ^ table[3][(v >> 32) & 0xff] ^ table[2][(v >> 40) & 0xff] ^
              table[1][(v >> 48) & 0xff] ^ table[0][v >> 56];
        p += 8;
        len -= 8;
    }
    while (len--)
        crc = (crc >> 8) ^ table[0][(crc ^ *p++) & 0xff];
    return ~crc;
}

/*
 * The hardware paths: SSE4.2's crc32 on x86-64, the ARMv8 CRC32C instructions
 * (<arm_acle.h>) on arm64, each in a function compiled for that extension and
 * called only once the CPU is known to have it (cpuid; AT_HWCAP), so one
 * build runs on every CPU of its architecture. Both share crc_hw below.
 */
#if defined(__x86_64__)
#include <cpuid.h>
#define HW_TARGET __attribute__((target("sse4.2")))
#define CRC_U64(c, v) __builtin_ia32_crc32di((c), (v))
#define CRC_U8(c, b) __builtin_ia32_crc32qi((uint32_t)(c), (b))

static int hw_probe(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    return (c & bit_SSE4_2) != 0;
}
#elif defined(__aarch64__)
#include <arm_acle.h>
#include <sys/auxv.h>
#include <asm/hwcap.h>
#define HW_TARGET __attribute__((target("+crc")))
#define CRC_U64(c, v) __crc32cd((uint32_t)(c), (v))
#define CRC_U8(c, b) __crc32cb((uint32_t)(c), (b))

static int hw_probe(void) { return (getauxval(AT_HWCAP) & HWCAP_CRC32) != 0; }
#endif

#if defined(CRC_U64)
/*
 * Three streams at once: the CRC instruction has a latency of 3 cycles and a
 * throughput of one per cycle on current x86 and ARM cores alike, so one
 * chain runs at a third of the speed. A block of 3 * M_LANE bytes is split
 * into three lanes whose CRCs run interleaved and are then joined: on the raw
 * (un-inverted) state, crc(c, A||B) = shift(crc(c, A), |B|) ^ crc(0, B), where
 * shift(c, n) = crc(c, n zero bytes) is linear in c and so a table lookup per
 * byte of c (lane_shift, built with the portable table).
 */
#define M_LANE 1360u /* 170 qwords: 3 lanes cover 4080 of a 4 KiB block */

static uint32_t lane_shift[4][256];
static pthread_once_t lane_once = PTHREAD_ONCE_INIT;

static void lane_init(void)
{
    pthread_once(&table_once, table_init);
    for (int k = 0; k < 4; k++) {
        for (uint32_t b = 0; b < 256; b++) {
            uint32_t c = b << (8 * k);
            for (uint32_t i = 0; i < M_LANE; i++)
                c = (c >> 8) ^ table[0][c & 0xff];
            lane_shift[k][b] = c;
        }
    }
}

static inline uint64_t shift_lane(uint64_t c)
{
    return lane_shift[0][c & 0xff] ^ lane_shift[1][(c >> 8) & 0xff] ^
           lane_shift[2][(c >> 16) & 0xff] ^ lane_shift[3][(c >> 24) & 0xff];
}

HW_TARGET static uint32_t crc32c_hw(uint32_t crc, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    uint64_t c = ~crc;
    while (len && ((uintptr_t)p & 7)) {
        c = CRC_U8(c, *p++);
        len--;
    }
    if (len >= 3 * M_LANE)
        pthread_once(&lane_once, lane_init);
    while (len >= 3 * M_LANE) {
        uint64_t c1 = 0, c2 = 0;
        for (uint32_t i = 0; i < M_LANE; i += 8) {
            uint64_t a, b, d;
            memcpy(&a, p + i, 8); /* memcpy: no unaligned or aliasing loads in C */
            memcpy(&b, p + M_LANE + i, 8);
            memcpy(&d, p + 2 * M_LANE + i, 8);
            c = CRC_U64(c, a);
            c1 = CRC_U64(c1, b);
            c2 = CRC_U64(c2, d);
        }
        c = shift_lane(shift_lane(c) ^ c1) ^ c2;
        p += 3 * M_LANE;
        len -= 3 * M_LANE;
    }
    while (len >= 8) {
        uint64_t a;
        memcpy(&a, p, 8);
        c = CRC_U64(c, a);
        p += 8;
        len -= 8;
    }
    while (len--)
        c = CRC_U8(c, *p++);
    return ~(uint32_t)c;
}
#else
static uint32_t crc32c_hw(uint32_t crc, const void *buf, size_t len) { return srrs_crc32c_sw(crc, buf, len); }
static int hw_probe(void) { return 0; }
#endif

/* -1 until probed; any thread may probe (the same answer), hence the atomics. */
static int hw = -1;

int srrs_crc32c_hw_available(void)
{
    int v = __atomic_load_n(&hw, __ATOMIC_RELAXED);
    if (v < 0) {
        v = hw_probe();
        __atomic_store_n(&hw, v, __ATOMIC_RELAXED);
    }
    return v;
}

uint32_t srrs_crc32c(uint32_t crc, const void *buf, size_t len)
{
    int v = __atomic_load_n(&hw, __ATOMIC_RELAXED);
    if (srrs_likely(v > 0) || (v < 0 && srrs_crc32c_hw_available()))
        return crc32c_hw(crc, buf, len);
    return srrs_crc32c_sw(crc, buf, len);
}
