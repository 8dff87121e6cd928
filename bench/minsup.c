/*
 * minsup: the yardstick for bench/run.sh, a minimal seccomp supervisor.
 *
 * Forks CMD under a filter that turns close(2) into a user notification
 * (NEW_LISTENER | WAIT_KILLABLE_RECV), takes the listener over a
 * socketpair, turns SYNC_WAKE_UP on, and answers every notification in one
 * blocking loop: RECV -> tgkill(SIGILL) -> SEND CONTINUE, the precise order
 * (design.md section 4). With --no-signal: RECV -> SEND, the bare round trip.
 * No decisions, no bookkeeping: the limit a supervisor can reach. (Only
 * fds from 100 up are signalled: closebench's; ld.so's closes come before
 * any handler.)
 *
 * Usage: minsup [--no-signal] CMD [ARGS...]; exits with CMD's status.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
#define SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (1UL << 5)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (1UL << 0)
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif

static int listener, do_signal = 1;
static pid_t child;

static void die(const char *what) {
    perror(what);
    exit(125);
}

static void *answer(void *unused) {
    (void)unused;
    for (;;) {
        struct seccomp_notif req;
        memset(&req, 0, sizeof req);
        if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, &req) != 0) {
            if (errno == ENOENT || errno == EINTR) continue;
            return NULL;
        }
        /* closebench closes fds 100 and up; lower ones are ld.so's, made
         * before its handler exists. */
        if (do_signal && req.data.args[0] >= 100) syscall(SYS_tgkill, child, req.pid, SIGILL);
        struct seccomp_notif_resp resp = {.id = req.id, .flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE};
        ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp);
    }
}

int main(int argc, char **argv) {
    int first = 1;
    if (argc > 1 && !strcmp(argv[1], "--no-signal")) do_signal = 0, first = 2;
    if (first >= argc) {
        fprintf(stderr, "usage: minsup [--no-signal] CMD [ARGS...]\n");
        return 64;
    }
    int sp[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) != 0) die("socketpair");
    child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        struct sock_filter code[] = {
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_close, 0, 1),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        struct sock_fprog prog = {sizeof code / sizeof code[0], code};
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) die("prctl");
        int fd = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                         SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV, &prog);
        if (fd < 0) die("seccomp");
        char byte = 0, control[CMSG_SPACE(sizeof(int))];
        struct iovec iov = {&byte, 1};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                             .msg_controllen = sizeof control};
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof fd);
        if (sendmsg(sp[1], &msg, 0) != 1) _exit(125);
        /* Both fds are CLOEXEC: no close() before exec. */
        execvp(argv[first], argv + first);
        _exit(127);
    }
    close(sp[1]);
    char byte, control[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {&byte, 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                         .msg_controllen = sizeof control};
    if (recvmsg(sp[0], &msg, 0) != 1) die("recvmsg");
    memcpy(&listener, CMSG_DATA(CMSG_FIRSTHDR(&msg)), sizeof listener);
    ioctl(listener, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP);
    pthread_t loop;
    if (pthread_create(&loop, NULL, answer, NULL) != 0) die("pthread_create");
    int status;
    while (waitpid(child, &status, 0) < 0)
        if (errno != EINTR) die("waitpid");
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
