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

#if defined(__x86_64__)
#include <cpuid.h>

__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t crc, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    uint64_t c = ~crc;
    while (len && ((uintptr_t)p & 7)) {
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
        len--;
    }
    /* Three independent streams hide the instruction's 3-cycle latency. */
    while (len >= 24) {
        uint64_t a, b, d;
        memcpy(&a, p, 8);
        memcpy(&b, p + 8, 8);
        memcpy(&d, p + 16, 8);
        c = __builtin_ia32_crc32di(c, a);
        c = __builtin_ia32_crc32di(c, b);
        c = __builtin_ia32_crc32di(c, d);
        p += 24;
        len -= 24;
    }
    while (len >= 8) {
        uint64_t a;
        memcpy(&a, p, 8);
        c = __builtin_ia32_crc32di(c, a);
        p += 8;
        len -= 8;
    }
    while (len--)
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
    return ~(uint32_t)c;
}

static int hw_probe(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    return (c & bit_SSE4_2) != 0;
}
#elif defined(__aarch64__)
#include <sys/auxv.h>
#include <asm/hwcap.h>

__attribute__((target("+crc"))) static uint32_t crc32c_hw(uint32_t crc, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    uint32_t c = ~crc;
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __builtin_aarch64_crc32cx(c, v);
        p += 8;
        len -= 8;
    }
    while (len--)
        c = __builtin_aarch64_crc32cb(c, *p++);
    return ~c;
}

static int hw_probe(void) { return (getauxval(AT_HWCAP) & HWCAP_CRC32) != 0; }
#else
static uint32_t crc32c_hw(uint32_t crc, const void *buf, size_t len) { return srrs_crc32c_sw(crc, buf, len); }
static int hw_probe(void) { return 0; }
#endif

static int hw = -1;

int srrs_crc32c_hw_available(void)
{
    if (hw < 0)
        hw = hw_probe();
    return hw;
}

uint32_t srrs_crc32c(uint32_t crc, const void *buf, size_t len)
{
    if (srrs_likely(hw > 0) || (hw < 0 && srrs_crc32c_hw_available()))
        return crc32c_hw(crc, buf, len);
    return srrs_crc32c_sw(crc, buf, len);
}
