/*
 * vsock_echo: the guest side of Petrel's `vsock-echo` boot test (xtask/src/vsock_boot.rs).
 * Built by xtask with the host's `gcc -static -O2` and put into the guest's root disk.
 *
 * Usage: vsock_echo HOST_PORT LISTEN_PORT
 *
 * 1. Guest to host: connects to the host (CID 2) on HOST_PORT, which Petrel forwards to the
 *    host's Unix socket <uds>_HOST_PORT, sends MESSAGE_TO_HOST and a newline, and checks
 *    that the host echoes it back.
 * 2. Host to guest: listens on LISTEN_PORT and prints LISTENING_CUE; the host connects to
 *    Petrel's <uds>, sends `CONNECT LISTEN_PORT`, then a line, which this program echoes
 *    back; it then waits for the host to close.
 *
 * Each part prints one `PETREL-CHECK NAME ok|FAIL DETAIL` line on stdout (the console),
 * which the boot test reads. Every wait is bounded (poll timeouts, and an alarm for the
 * whole run); the exit status is 0 only when both parts passed.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

/* Must match xtask/src/vsock_boot.rs. */
#define MESSAGE_TO_HOST "petrel-vsock guest to host: 7a41"
#define LISTENING_CUE "PETREL-VSOCK-LISTENING"

/* Milliseconds any one wait may take, and seconds the whole program may run. */
#define WAIT_MS 30000
#define ALARM_SECS 120

static char detail[512];

/* Prints one check line (the console is line-buffered only when it is a tty). */
static void check(const char *name, int ok) {
    printf("PETREL-CHECK %s %s %s\n", name, ok ? "ok" : "FAIL", detail);
    fflush(stdout);
}

/* Waits until fd is readable (or hung up); 0 when it is, -1 on a timeout or error. */
static int wait_readable(int fd) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int n = poll(&p, 1, WAIT_MS);
    if (n == 1)
        return 0;
    if (n == 0)
        errno = ETIMEDOUT;
    return -1;
}

/*
 * Reads one line (up to and without the '\n') into buf; returns its length, or -1 with errno
 * set (ECONNRESET for an end before the newline, EMSGSIZE for a line too long).
 */
static int read_line(int fd, char *buf, size_t cap) {
    size_t len = 0;
    for (;;) {
        char c;
        if (wait_readable(fd) < 0)
            return -1;
        ssize_t n = read(fd, &c, 1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0) {
            errno = ECONNRESET;
            return -1;
        }
        if (c == '\n') {
            buf[len] = 0;
            return (int)len;
        }
        if (len + 1 >= cap) {
            errno = EMSGSIZE;
            return -1;
        }
        buf[len++] = c;
    }
}

/* Writes all of buf; 0, or -1 with errno set. */
static int write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Part 1: connect to the host, send the message, check the echo. */
static int guest_to_host(unsigned port) {
    struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_HOST, .svm_port = port};
    char line[256];
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (fd < 0) {
        snprintf(detail, sizeof detail, "socket(AF_VSOCK): %s", strerror(errno));
        return 0;
    }
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        snprintf(detail, sizeof detail, "connect to CID 2 port %u: %s", port, strerror(errno));
        close(fd);
        return 0;
    }
    if (write_all(fd, MESSAGE_TO_HOST "\n", strlen(MESSAGE_TO_HOST) + 1) < 0) {
        snprintf(detail, sizeof detail, "sending to the host: %s", strerror(errno));
        close(fd);
        return 0;
    }
    int n = read_line(fd, line, sizeof line);
    close(fd);
    if (n < 0) {
        snprintf(detail, sizeof detail, "reading the host's echo: %s", strerror(errno));
        return 0;
    }
    if (strcmp(line, MESSAGE_TO_HOST) != 0) {
        snprintf(detail, sizeof detail, "the host echoed '%.200s'", line);
        return 0;
    }
    snprintf(detail, sizeof detail, "CID 2 port %u echoed the %d-byte message", port, n);
    return 1;
}

/* Part 2: listen, announce it, echo one line from the host, wait for the host's end. */
static int host_to_guest(unsigned port) {
    struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port};
    char line[256];
    int lfd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (lfd < 0) {
        snprintf(detail, sizeof detail, "socket(AF_VSOCK): %s", strerror(errno));
        return 0;
    }
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 1) < 0) {
        snprintf(detail, sizeof detail, "listening on port %u: %s", port, strerror(errno));
        close(lfd);
        return 0;
    }
    printf("%s %u\n", LISTENING_CUE, port);
    fflush(stdout);
    if (wait_readable(lfd) < 0) {
        snprintf(detail, sizeof detail, "no connection to port %u: %s", port, strerror(errno));
        close(lfd);
        return 0;
    }
    struct sockaddr_vm peer;
    socklen_t peer_len = sizeof peer;
    int fd = accept(lfd, (struct sockaddr *)&peer, &peer_len);
    close(lfd);
    if (fd < 0) {
        snprintf(detail, sizeof detail, "accept on port %u: %s", port, strerror(errno));
        return 0;
    }
    int n = read_line(fd, line, sizeof line);
    if (n < 0) {
        snprintf(detail, sizeof detail, "reading the host's line: %s", strerror(errno));
        close(fd);
        return 0;
    }
    line[n] = '\n';
    if (write_all(fd, line, (size_t)n + 1) < 0) {
        snprintf(detail, sizeof detail, "echoing: %s", strerror(errno));
        close(fd);
        return 0;
    }
    /* The host closes once it has checked the echo: wait for that end. */
    char c;
    int end = wait_readable(fd) == 0 ? (int)read(fd, &c, 1) : -1;
    close(fd);
    if (end != 0) {
        snprintf(detail, sizeof detail, "the host did not close after the echo");
        return 0;
    }
    line[n] = 0;
    snprintf(detail, sizeof detail, "CID %u port %u connected and got its %d-byte line echoed: %.100s",
             peer.svm_cid, peer.svm_port, n, line);
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s HOST_PORT LISTEN_PORT\n", argv[0]);
        return 2;
    }
    /* SIGALRM's default action ends the program: the script then reports its status. */
    alarm(ALARM_SECS);
    unsigned host_port = (unsigned)strtoul(argv[1], NULL, 10);
    unsigned listen_port = (unsigned)strtoul(argv[2], NULL, 10);
    int a = guest_to_host(host_port);
    check("vsock-g2h", a);
    int b = host_to_guest(listen_port);
    check("vsock-h2g", b);
    return a && b ? 0 : 1;
}
