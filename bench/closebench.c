/*
 * closebench: N closes in one thread, timed; prints ns per close.
 * With --handler, a minimal SIGILL handler counts signals (and the count is
 * checked against N so a benchmark can't pass by signalling nothing).
 * With --crash-handler, the same handler is SIGSEGV's too: a crash handler
 * to sigvisor, which never signals it (the count must stay 0).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile long signals;
static void on_sigill(int sig) { (void)sig; signals++; }

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 20000;
    int crash = argc > 2 && !strcmp(argv[2], "--crash-handler");
    if (crash || (argc > 2 && !strcmp(argv[2], "--handler"))) {
        struct sigaction sa = {0};
        sa.sa_handler = on_sigill;
        sigaction(SIGILL, &sa, NULL);
        if (crash) sigaction(SIGSEGV, &sa, NULL);
    }
    int devnull = open("/dev/null", O_RDONLY);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        dup2(devnull, 100);
        if (close(100) != 0) { perror("close"); return 1; }
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n;
    printf("%.0f %ld\n", ns, signals);
    return 0;
}
