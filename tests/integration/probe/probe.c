/* A tiny static test program for images that have no systemd tools:
 *   probe notify TEXT     send TEXT (e.g. READY=1) to $NOTIFY_SOCKET
 *   probe serve GREETING  accept connections on the socket-activated fd 3,
 *                         answer GREETING plus what LISTEN_* said, forever
 */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* systemd finds the unit of a notification by the sender's cgroup: a sender that exits
 * before systemd reads the message is "not found" and ignored. BARRIER=1 carries a pipe's
 * write end, which systemd closes once it has processed every earlier message. */
static int barrier(int fd, const struct sockaddr_un *addr) {
    int pipefd[2];
    if (pipe(pipefd) < 0) return -1;
    char control[CMSG_SPACE(sizeof(int))] = {0};
    struct iovec iov = { .iov_base = "BARRIER=1", .iov_len = 9 };
    struct msghdr msg = { .msg_name = (void *)addr, .msg_namelen = sizeof(*addr),
                          .msg_iov = &iov, .msg_iovlen = 1,
                          .msg_control = control, .msg_controllen = sizeof(control) };
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &pipefd[1], sizeof(int));
    if (sendmsg(fd, &msg, 0) < 0) return -1;
    close(pipefd[1]);
    struct pollfd p = { .fd = pipefd[0], .events = POLLHUP };
    return poll(&p, 1, 5000) == 1 ? 0 : -1;
}

static int notify(const char *text) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path) { fprintf(stderr, "probe: NOTIFY_SOCKET is not set\n"); return 2; }
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    strncpy(addr.sun_path, path, sizeof(addr.sun_path) - 1);
    if (addr.sun_path[0] == '@') addr.sun_path[0] = 0;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || sendto(fd, text, strlen(text), 0, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        perror("probe: notify");
        return 1;
    }
    if (barrier(fd, &addr) < 0) {
        perror("probe: notify barrier");
        return 1;
    }
    return 0;
}

static int serve(const char *greeting) {
    const char *fds = getenv("LISTEN_FDS"), *pid = getenv("LISTEN_PID");
    if (!fds || !pid || atoi(fds) < 1 || atoi(pid) != getpid()) {
        fprintf(stderr, "probe: no socket activation (LISTEN_FDS=%s LISTEN_PID=%s pid=%d)\n",
                fds ? fds : "", pid ? pid : "", getpid());
        return 2;
    }
    for (;;) {
        int conn = accept(3, NULL, NULL);
        if (conn < 0) { perror("probe: accept"); return 1; }
        dprintf(conn, "%s LISTEN_FDS=%s LISTEN_PID=%s pid=%d\n", greeting, fds, pid, getpid());
        close(conn);
    }
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "notify") == 0) return notify(argv[2]);
    if (argc == 3 && strcmp(argv[1], "serve") == 0) return serve(argv[2]);
    fprintf(stderr, "usage: probe notify TEXT | probe serve GREETING\n");
    return 2;
}
