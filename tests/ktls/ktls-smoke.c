/*
 * ktls-smoke: checks that this kernel can do what ringsocks' kernel TLS
 * offload needs, without rustls: io_uring_setup works, the "tls" ULP
 * attaches to a TCP socket, and for each cipher ringsocks can hand over
 * (TLS 1.3 AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305; TLS 1.2 AES-128-GCM)
 * records written through TLS_TX on one end of a loopback connection read
 * back as the same plaintext through TLS_RX on the other end.
 *
 *   gcc -O2 -Wall -o /tmp/ktls-smoke tests/ktls/ktls-smoke.c
 *   tests/ktls/run-vm.sh -- /tmp/ktls-smoke [MB]
 *
 * With MB, it also times MB megabytes over loopback, plain TCP and then
 * kTLS (AES-128-GCM), to show what the VM's speed is. Exits 0 when every
 * check passes, 1 otherwise, and prints one line per check.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/tls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef TCP_ULP
#define TCP_ULP 31
#endif
#ifndef SOL_TLS
#define SOL_TLS 282
#endif

static int failures;

static void result(const char *what, int ok, const char *detail) {
    printf("%-40s %s%s%s\n", what, ok ? "OK" : "FAIL", detail ? ": " : "", detail ? detail : "");
    if (!ok) failures++;
}

/* A connected loopback pair: *c is the client end, *s the accepted end. */
static int tcp_pair(int *c, int *s) {
    struct sockaddr_in a = {0};
    socklen_t al = sizeof a;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (l < 0 || bind(l, (void *)&a, sizeof a) || listen(l, 1) ||
        getsockname(l, (void *)&a, &al))
        return -1;
    *c = socket(AF_INET, SOCK_STREAM, 0);
    if (*c < 0 || connect(*c, (void *)&a, sizeof a)) return -1;
    *s = accept(l, NULL, NULL);
    close(l);
    return *s < 0 ? -1 : 0;
}

struct cipher {
    const char *name;
    unsigned short version, type;
    size_t size;
};

/* Fill one crypto_info of the given cipher with a fixed test key. */
static void fill(const struct cipher *ci, unsigned char *buf) {
    memset(buf, 0, 64);
    struct tls_crypto_info *info = (void *)buf;
    info->version = ci->version;
    info->cipher_type = ci->type;
    for (size_t i = sizeof *info; i < ci->size; i++) buf[i] = (unsigned char)(i * 7 + 1);
}

static int set_ulp(int fd) { return setsockopt(fd, SOL_TCP, TCP_ULP, "tls", 3); }

static int read_full(int fd, char *p, size_t n) {
    while (n) {
        ssize_t r = read(fd, p, n);
        if (r <= 0) return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static void check_cipher(const struct cipher *ci) {
    char what[64], detail[128];
    unsigned char info[64];
    int c, s;
    snprintf(what, sizeof what, "kTLS round trip %s", ci->name);
    if (tcp_pair(&c, &s)) { result(what, 0, strerror(errno)); return; }
    fill(ci, info);
    const char *step = "ulp";
    if (set_ulp(c) || set_ulp(s)) goto fail;
    step = "TLS_TX";
    if (setsockopt(c, SOL_TLS, TLS_TX, info, ci->size)) goto fail;
    step = "TLS_RX";
    if (setsockopt(s, SOL_TLS, TLS_RX, info, ci->size)) goto fail;
    const char msg[] = "hello through the kernel's TLS records";
    char got[sizeof msg] = {0};
    step = "write";
    if (write(c, msg, sizeof msg) != (ssize_t)sizeof msg) goto fail;
    step = "read";
    if (read_full(s, got, sizeof msg)) goto fail;
    result(what, memcmp(msg, got, sizeof msg) == 0, NULL);
    close(c);
    close(s);
    return;
fail:
    snprintf(detail, sizeof detail, "%s: errno %d (%s)", step, errno, strerror(errno));
    result(what, 0, detail);
    close(c);
    close(s);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* Push mb megabytes from c to s in a child process; print MB/s. */
static void throughput(const char *what, int c, int s, long mb) {
    static char buf[1 << 16];
    long total = mb << 20, got = 0;
    double t0 = now();
    pid_t pid = fork();
    if (pid == 0) {
        memset(buf, 'x', sizeof buf);
        for (long sent = 0; sent < total; sent += (long)sizeof buf)
            if (write(c, buf, sizeof buf) != (ssize_t)sizeof buf) _exit(1);
        _exit(0);
    }
    while (got < total) {
        ssize_t r = read(s, buf, sizeof buf);
        if (r <= 0) break;
        got += r;
    }
    int st = 0;
    waitpid(pid, &st, 0);
    double dt = now() - t0;
    char detail[96];
    snprintf(detail, sizeof detail, "%ld MiB in %.2fs = %.1f MiB/s", got >> 20, dt, (got >> 20) / dt);
    result(what, got == total && WIFEXITED(st) && WEXITSTATUS(st) == 0, detail);
}

int main(int argc, char **argv) {
    long mb = argc > 1 ? atol(argv[1]) : 0;
    setvbuf(stdout, NULL, _IOLBF, 0);

    /* io_uring_setup(2) with a tiny ring: ENOSYS/EPERM mean it is off. */
    unsigned char params[120] = {0};
    long ring = syscall(__NR_io_uring_setup, 4, params);
    result("io_uring_setup", ring >= 0, ring >= 0 ? NULL : strerror(errno));
    if (ring >= 0) close((int)ring);

    int c, s;
    if (tcp_pair(&c, &s)) { result("loopback TCP", 0, strerror(errno)); return 1; }
    int ok = set_ulp(c) == 0;
    result("setsockopt(TCP_ULP, \"tls\")", ok, ok ? NULL : strerror(errno));
    close(c);
    close(s);

    const struct cipher ciphers[] = {
        {"TLS1.3 AES-128-GCM", TLS_1_3_VERSION, TLS_CIPHER_AES_GCM_128,
         sizeof(struct tls12_crypto_info_aes_gcm_128)},
        {"TLS1.3 AES-256-GCM", TLS_1_3_VERSION, TLS_CIPHER_AES_GCM_256,
         sizeof(struct tls12_crypto_info_aes_gcm_256)},
        {"TLS1.3 CHACHA20-POLY1305", TLS_1_3_VERSION, TLS_CIPHER_CHACHA20_POLY1305,
         sizeof(struct tls12_crypto_info_chacha20_poly1305)},
        {"TLS1.2 AES-128-GCM", TLS_1_2_VERSION, TLS_CIPHER_AES_GCM_128,
         sizeof(struct tls12_crypto_info_aes_gcm_128)},
    };
    for (size_t i = 0; i < sizeof ciphers / sizeof ciphers[0]; i++) check_cipher(&ciphers[i]);

    if (mb > 0) {
        if (tcp_pair(&c, &s) == 0) {
            throughput("loopback plain TCP", c, s, mb);
            close(c);
            close(s);
        }
        unsigned char info[64];
        fill(&ciphers[0], info);
        if (tcp_pair(&c, &s) == 0 && set_ulp(c) == 0 && set_ulp(s) == 0 &&
            setsockopt(c, SOL_TLS, TLS_TX, info, ciphers[0].size) == 0 &&
            setsockopt(s, SOL_TLS, TLS_RX, info, ciphers[0].size) == 0)
            throughput("loopback kTLS AES-128-GCM", c, s, mb);
        else
            result("loopback kTLS AES-128-GCM", 0, strerror(errno));
    }
    printf("%s\n", failures ? "ktls-smoke: FAILED" : "ktls-smoke: all checks passed");
    return failures ? 1 : 0;
}
