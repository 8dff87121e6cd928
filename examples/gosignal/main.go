// gosignal: who closes this file?
//
// Run under sigvisor, every close(2) this program makes raises SIGILL in the
// closing thread just after the close completed. The C handler below hands
// off to a goroutine that prints every goroutine's stack, and waits for it:
// the goroutine in state [syscall] under syscall.Close is the one that
// closed, caught at the close's return.
//
// main opens /dev/null in a goroutine and drops the *os.File without closing
// it, so the garbage collector's finalizer closes it; then os.ReadFile opens
// and closes it explicitly. The two dumps show the two culprits.
package main

/*
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

static int notify_fd = -1, done_fd = -1;

// Runs on the closing thread (on Go's signal stack: SA_ONSTACK), while its
// goroutine is still inside syscall.Close. Only async-signal-safe calls.
static void on_sigill(int sig, siginfo_t *info, void *ctx) {
	(void)sig; (void)info; (void)ctx;
	int saved = errno;
	char b = 1;
	if (write(notify_fd, &b, 1) == 1) {
		while (read(done_fd, &b, 1) < 0 && errno == EINTR) {
		}
	}
	errno = saved;
}

static int install_sigill_handler(int notify, int done) {
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	notify_fd = notify;
	done_fd = done;
	sa.sa_sigaction = on_sigill;
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
	// Nothing else (Go's preemption SIGURG included) interrupts the wait.
	sigfillset(&sa.sa_mask);
	if (sigaction(SIGILL, &sa, NULL) != 0)
		return -1;
	// sigvisor takes a handler change as made once the thread that made it
	// has slept since (it cannot see the kernel finish the call): until
	// then a close on another thread goes unsignalled, to be safe. Sleep
	// once here, so that the finalizer's close, on another thread, is
	// signalled however soon it comes (docs/design.md, "A change is not
	// made when it is answered").
	usleep(1000);
	return 0;
}
*/
import "C"

import (
	"fmt"
	"os"
	"runtime"
	"syscall"
	"time"
)

// dumpOnSignal prints all goroutines' stacks each time the handler asks,
// then lets the handler (and the closing thread) go on.
func dumpOnSignal(notify, done int) {
	buf := make([]byte, 1<<20)
	b := make([]byte, 1)
	for n := 1; ; n++ {
		if _, err := syscall.Read(notify, b); err != nil {
			if err == syscall.EINTR {
				n--
				continue
			}
			fmt.Fprintf(os.Stderr, "gosignal: reading the handler's pipe: %v\n", err)
			os.Exit(1)
		}
		size := runtime.Stack(buf, true)
		fmt.Printf("=== SIGILL #%d: a thread just closed a file; all goroutines:\n%s\n", n, buf[:size])
		if _, err := syscall.Write(done, b); err != nil {
			fmt.Fprintf(os.Stderr, "gosignal: releasing the handler: %v\n", err)
			os.Exit(1)
		}
	}
}

// Raw pipes: blocking, unlike os.Pipe's, because the C handler blocks on one.
func pipe() (r, w int) {
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_CLOEXEC); err != nil {
		fmt.Fprintf(os.Stderr, "gosignal: pipe: %v\n", err)
		os.Exit(1)
	}
	return p[0], p[1]
}

// With GOSIGNAL_INIT_CLOSE=1 a package initializer closes a file, before
// main can install the handler: the case docs/profiles.md explains (Go's
// runtime handler is already there, so from outside the process looks
// ready, and a SIGILL then crashes it).
func init() {
	if os.Getenv("GOSIGNAL_INIT_CLOSE") == "1" {
		if _, err := os.ReadFile("/dev/null"); err != nil {
			fmt.Fprintf(os.Stderr, "gosignal: init: %v\n", err)
		}
	}
}

//go:noinline
func openAndForget(opened chan<- int) {
	f, err := os.Open("/dev/null")
	if err != nil {
		fmt.Fprintf(os.Stderr, "gosignal: %v\n", err)
		os.Exit(1)
	}
	if _, err := f.Read(make([]byte, 16)); err != nil && err.Error() != "EOF" {
		fmt.Fprintf(os.Stderr, "gosignal: read: %v\n", err)
	}
	// f is dropped here, unclosed: its finalizer will close it.
	opened <- int(f.Fd())
}

// closed reports whether fd is closed, without closing anything (a close
// would be signalled too).
func closed(fd int) bool {
	_, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_GETFD, 0)
	return errno == syscall.EBADF
}

func main() {
	notifyR, notifyW := pipe()
	doneR, doneW := pipe()
	if C.install_sigill_handler(C.int(notifyW), C.int(doneR)) != 0 {
		fmt.Fprintln(os.Stderr, "gosignal: sigaction(SIGILL) failed")
		os.Exit(1)
	}
	go dumpOnSignal(notifyR, doneW)

	opened := make(chan int)
	go openAndForget(opened)
	fd := <-opened
	runtime.GC() // finds the unreachable *os.File, queues its finalizer
	runtime.GC()
	time.Sleep(200 * time.Millisecond) // the finalizer goroutine closes it
	if !closed(fd) {
		fmt.Fprintf(os.Stderr, "gosignal: fd %d is still open after its finalizer's close\n", fd)
		os.Exit(1)
	}

	// os.ReadFile gets the lowest free fd, the same number again.
	if _, err := os.ReadFile("/dev/null"); err != nil {
		fmt.Fprintf(os.Stderr, "gosignal: ReadFile: %v\n", err)
		os.Exit(1)
	}
	if !closed(fd) {
		fmt.Fprintf(os.Stderr, "gosignal: fd %d is still open after os.ReadFile\n", fd)
		os.Exit(1)
	}
	fmt.Println("gosignal: done; every close closed its file")
}
