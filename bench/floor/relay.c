/*
 * The floor under "CPU per message at 1,000 messages/s": what this machine's kernel charges a
 * server for taking one message from one loopback TCP connection and writing it to another,
 * with nothing in between (no parsing, no routing, no storage).
 *
 *   relay PORT PAIRS            server: accepts 2*PAIRS connections, forwards each message
 *                               from connection 2k to 2k+1 and back (epoll, one thread);
 *                               runs until stopped
 *   drive PORT PAIRS RATE SECS  client: sends BYTES-byte messages at RATE per second spread
 *                               over the pairs, reads them on the other side
 *
 * bench/floor/run.sh builds both, pins relay and driver to the cores the harness uses and
 * prints the relay's CPU per message. Linux only; C99; no dependencies.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BYTES 300
#define MAXCONN 4096

static void die(const char *what) {
    perror(what);
    exit(1);
}

static int relay(int port, int pairs) {
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(listener, (struct sockaddr *)&address, sizeof address) != 0) die("bind");
    if (listen(listener, 1024) != 0) die("listen");
    int connections[MAXCONN];
    int count = 2 * pairs;
    if (count > MAXCONN) count = MAXCONN;
    int epoll = epoll_create1(0);
    for (int i = 0; i < count; i++) {
        connections[i] = accept(listener, NULL, NULL);
        if (connections[i] < 0) die("accept");
        setsockopt(connections[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct epoll_event event = {.events = EPOLLIN, .data.u32 = (unsigned)i};
        epoll_ctl(epoll, EPOLL_CTL_ADD, connections[i], &event);
    }
    char buffer[65536];
    struct epoll_event events[64];
    for (;;) {
        int ready = epoll_wait(epoll, events, 64, -1);
        if (ready < 0 && errno == EINTR) continue;
        for (int e = 0; e < ready; e++) {
            int from = (int)events[e].data.u32;
            ssize_t got = read(connections[from], buffer, sizeof buffer);
            if (got <= 0) {  /* the driver is done: stay up (the script reads our CPU, then stops us) */
                epoll_ctl(epoll, EPOLL_CTL_DEL, connections[from], NULL);
                continue;
            }
            int to = connections[from ^ 1];
            for (ssize_t sent = 0; sent < got;) {
                ssize_t n = write(to, buffer + sent, (size_t)(got - sent));
                if (n < 0) die("write");
                sent += n;
            }
        }
    }
}

static int drive(int port, int pairs, int rate, int seconds) {
    int count = 2 * pairs;
    if (count > MAXCONN) count = MAXCONN;
    int connections[MAXCONN];
    int one = 1;
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    for (int i = 0; i < count; i++) {
        connections[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(connections[i], (struct sockaddr *)&address, sizeof address) != 0) die("connect");
        setsockopt(connections[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    char message[BYTES];
    memset(message, 'x', sizeof message);
    char buffer[65536];
    long total = (long)rate * seconds;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    long interval = 1000000000L / rate;
    for (long i = 0; i < total; i++) {
        int from = (int)(i % count);
        if (write(connections[from], message, sizeof message) != (ssize_t)sizeof message) die("send");
        size_t got = 0;
        while (got < sizeof message) {
            ssize_t n = read(connections[from ^ 1], buffer, sizeof buffer);
            if (n <= 0) die("receive");
            got += (size_t)n;
        }
        next.tv_nsec += interval;
        while (next.tv_nsec >= 1000000000L) {
            next.tv_nsec -= 1000000000L;
            next.tv_sec += 1;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
    }
    for (int i = 0; i < count; i++) close(connections[i]);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 4 && strcmp(argv[1], "relay") == 0) return relay(atoi(argv[2]), atoi(argv[3]));
    if (argc >= 6 && strcmp(argv[1], "drive") == 0) return drive(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
    fprintf(stderr, "usage: %s relay PORT PAIRS | drive PORT PAIRS RATE SECONDS\n", argv[0]);
    return 2;
}
