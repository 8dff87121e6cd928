/*
 * closebench: N closes in each of T threads, timed; prints the wall time per
 * close (all threads' closes together) in ns, and the signals counted.
 * With --handler, a minimal SIGILL handler counts signals (and the count is
 * checked against N*T so a benchmark can't pass by signalling nothing).
 * With --crash-handler, the same handler is SIGSEGV's too: a crash handler
 * to sigvisor, which never signals it (the count must stay 0).
 * With --depth D, each thread closes D calls deep (D-1 frames of descend()
 * above the loop), for the cost of capturing a deep stack.
 *
 * Usage: closebench N [--handler|--crash-handler] [--threads T] [--depth D]
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_long signals;
static long n = 20000;
static int devnull;

static void on_sigill(int sig) { (void)sig; atomic_fetch_add(&signals, 1); }

static int depth = 1;

__attribute__((noinline)) static void close_loop(int fd) {
    for (long i = 0; i < n; i++) {
        dup2(devnull, fd);
        if (close(fd) != 0) { perror("close"); exit(1); }
    }
}

/* Not a tail call (the add after it), so every level keeps its frame. */
__attribute__((noinline)) static int descend(int level, int fd) {
    if (level <= 1) {
        close_loop(fd);
        return 0;
    }
    int r = descend(level - 1, fd);
    __asm__ volatile("" ::: "memory");
    return r + 1;
}

static void *closer(void *arg) {
    descend(depth, 100 + (int)(long)arg);
    return NULL;
}

int main(int argc, char **argv) {
    int threads = 1, handler = 0, crash = 0;
    if (argc > 1) n = atol(argv[1]);
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--handler")) handler = 1;
        else if (!strcmp(argv[i], "--crash-handler")) handler = crash = 1;
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--depth") && i + 1 < argc) depth = atoi(argv[++i]);
    }
    if (threads < 1 || threads > 64) threads = 1;
    if (handler) {
        struct sigaction sa = {0};
        sa.sa_handler = on_sigill;
        sigaction(SIGILL, &sa, NULL);
        if (crash) sigaction(SIGSEGV, &sa, NULL);
    }
    devnull = open("/dev/null", O_RDONLY);
    pthread_t tids[64];
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int t = 0; t < threads; t++) pthread_create(&tids[t], NULL, closer, (void *)(long)t);
    for (int t = 0; t < threads; t++) pthread_join(tids[t], NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / ((double)n * threads);
    printf("%.0f %ld\n", ns, atomic_load(&signals));
    return 0;
}
