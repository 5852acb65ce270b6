/*
 * Phoenix-over-WebSocket load client for the benchmarks: many sockets, one thread, epoll.
 *
 * Why C: a Python client tops out far below the rates the benchmarks need, and the client
 * must never be the bottleneck. The WebSocket client handshake and
 * framing are written out here (the server's Sec-WebSocket-Accept is not checked); zlib
 * inflates permessage-deflate.
 *
 * Usage: loadclient HOST PORT SPEC_FILE [options]
 *   SPEC_FILE: one line per socket, tab separated: REQUEST_PATH TOPIC TOKEN [TOPIC TOKEN]...
 *   -c N   handshakes in flight at once (default 100)
 *   -m S   hard lifetime in seconds; the client stops by itself (default 300)
 *   -b S   heartbeat interval (default 30, as phoenix.js): each socket beats on its own
 *          schedule from its handshake, to within HB_SCAN, as phoenix.js's timer per socket
 *   -e EV  broadcast event whose payload carries "t": publish time in us since the epoch (tick)
 *   -p TOPIC -n K  track presence of TOPIC; keys "c<index>" set bits; "full" when K are held
 *   -J     a socket counts toward -c until its joins are answered, not only its handshake,
 *          so -c paces the join storm too
 *   -s PREFIX  each socket's ticks must come on topic PREFIX"c<index>" (its own streaming
 *          channel); those on any other topic are counted as misrouted
 *   -z     offer permessage-deflate (as browsers do) and inflate what comes compressed
 *          (RSV1), each message on its own (no context takeover); bytes_in stays wire bytes
 *
 * stdout, one line each: "CONNECTED <s>", "JOINED <s>", "PRESENCE <s>" (seconds since start,
 * when every socket reached that state), "STATS <json>" after a "stats" line on stdin, and
 * "RESULT <json>" at the end (on "quit", stdin EOF, SIGTERM or the hard lifetime).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

enum { S_IDLE, S_CONNECTING, S_HANDSHAKE, S_OPEN, S_CLOSED };

typedef struct {
    int fd, state, index;
    char *line;              /* request path, then topic/token pairs (NUL separated) */
    int ntopics;
    char **topics, **tokens;
    int joins_ok;
    char *rbuf; size_t rlen, rcap;
    char *wbuf; size_t wlen, wcap;
    char *msg; size_t msglen, msgcap; int msgop, msgz;   /* fragmented message being assembled; msgz: RSV1 */
    uint64_t ticks;
    uint8_t *bits; int pcount, full;
    double next_hb; unsigned hb_ref;
} conn_t;

static conn_t *conns;
static int nconns, epfd;
static const char *host; static int port;
static int concurrency = 100, hard_limit = 300, hb_interval = 30;
#define HB_SCAN 0.01 /* seconds between looks for heartbeats due */
static const char *tick_event = "tick", *presence_topic = NULL, *own_prefix = NULL;
static int presence_want = 0, pace_joins = 0, offer_deflate = 0;
static char *inflated; static size_t inflated_cap;  /* one message inflated at a time */
static double t0;
static volatile sig_atomic_t stop_flag = 0;

/* counters */
static long connected, connect_errors, handshake_errors, closed_by_server, joined_conns, join_errors,
    full_conns, in_flight, next_to_start;
static uint64_t frames_in, bytes_in, frames_out, bytes_out, ticks_total, binary_in, other_in,
    presence_state_in, presence_diff_in, replies_in, hb_replies, misrouted;
static double t_connected = -1, t_joined = -1, t_presence = -1;
static uint32_t *lat; static size_t nlat, latcap; static const size_t LATMAX = 50u * 1000 * 1000;
static uint64_t lat_dropped, lat_max_us;
static char first_join_error[256];

static double mono(void) { struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts); return ts.tv_sec + ts.tv_nsec / 1e9; }
static int64_t wall_us(void) { struct timespec ts; clock_gettime(CLOCK_REALTIME, &ts); return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000; }

static void die(const char *m) { perror(m); exit(2); }

static void buf_append(char **b, size_t *len, size_t *cap, const char *d, size_t n) {
    if (*len + n > *cap) {
        size_t c = *cap ? *cap : 1024;
        while (c < *len + n) c *= 2;
        *b = realloc(*b, c); if (!*b) die("realloc");
        *cap = c;
    }
    memcpy(*b + *len, d, n); *len += n;
}

static void set_events(conn_t *c, uint32_t ev) {
    struct epoll_event e = {.events = ev, .data.u32 = (uint32_t)c->index};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &e) < 0) die("epoll_ctl mod");
}

static void conn_close(conn_t *c, int by_server) {
    if (c->state == S_CLOSED) return;
    if (c->state == S_CONNECTING || c->state == S_HANDSHAKE || (pace_joins && c->state == S_OPEN && c->joins_ok < c->ntopics))
        in_flight--;
    if (by_server && c->state == S_OPEN) closed_by_server++;
    if (by_server && c->state == S_HANDSHAKE) handshake_errors++;  /* closed before its 101 */
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->state = S_CLOSED;
    free(c->rbuf); c->rbuf = NULL; c->rlen = c->rcap = 0;
    free(c->wbuf); c->wbuf = NULL; c->wlen = c->wcap = 0;
}

static void flush_out(conn_t *c) {
    while (c->wlen) {
        ssize_t n = write(c->fd, c->wbuf, c->wlen);
        if (n < 0) {
            if (errno == EAGAIN) { set_events(c, EPOLLIN | EPOLLOUT); return; }
            conn_close(c, 1); return;
        }
        memmove(c->wbuf, c->wbuf + n, c->wlen - n); c->wlen -= n;
    }
    if (c->state != S_CONNECTING) set_events(c, EPOLLIN);
}

static void send_raw(conn_t *c, const char *d, size_t n) {
    if (c->state == S_CLOSED) return;
    if (c->wlen == 0) {
        ssize_t w = write(c->fd, d, n);
        if (w == (ssize_t)n) return;
        if (w < 0) { if (errno != EAGAIN) { conn_close(c, 1); return; } w = 0; }
        d += w; n -= w;
    }
    buf_append(&c->wbuf, &c->wlen, &c->wcap, d, n);
    set_events(c, EPOLLIN | EPOLLOUT);
}

/* A masked client text frame. */
static void send_text(conn_t *c, const char *d, size_t n) {
    char hdr[14]; size_t h = 0;
    hdr[h++] = (char)0x81;
    if (n < 126) hdr[h++] = (char)(0x80 | n);
    else if (n < 65536) { hdr[h++] = (char)(0x80 | 126); hdr[h++] = n >> 8; hdr[h++] = n & 255; }
    else { hdr[h++] = (char)(0x80 | 127); for (int i = 7; i >= 0; i--) hdr[h++] = (n >> (8 * i)) & 255; }
    uint32_t r = (uint32_t)rand();
    unsigned char mask[4] = {r & 255, (r >> 8) & 255, (r >> 16) & 255, r >> 24};
    memcpy(hdr + h, mask, 4); h += 4;
    char *frame = malloc(h + n);
    memcpy(frame, hdr, h);
    for (size_t i = 0; i < n; i++) frame[h + i] = d[i] ^ mask[i & 3];
    send_raw(c, frame, h + n);
    free(frame);
    frames_out++; bytes_out += h + n;
}

static void send_heartbeat(conn_t *c) {
    char m[96];
    int n = snprintf(m, sizeof m, "[null,\"h%u\",\"phoenix\",\"heartbeat\",{}]", ++c->hb_ref);
    send_text(c, m, n);
}

static void send_joins(conn_t *c) {
    for (int i = 0; i < c->ntopics; i++) {
        size_t cap = strlen(c->topics[i]) + strlen(c->tokens[i]) + 96;
        char *m = malloc(cap);
        int n = snprintf(m, cap, "[\"j%d\",\"j%d\",\"%s\",\"phx_join\",{\"token\":\"%s\"}]", i + 1, i + 1,
                         c->topics[i], c->tokens[i]);
        send_text(c, m, n);
        free(m);
    }
}

static void start_next(void) {
    while (in_flight < concurrency && next_to_start < nconns) {
        conn_t *c = &conns[next_to_start++];
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (c->fd < 0) { connect_errors++; c->state = S_CLOSED; continue; }
        int one = 1; setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
        inet_pton(AF_INET, host, &a.sin_addr);
        struct epoll_event e = {.events = EPOLLOUT, .data.u32 = (uint32_t)c->index};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &e) < 0) die("epoll_ctl add");
        c->state = S_CONNECTING; in_flight++;
        if (connect(c->fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) {
            connect_errors++; conn_close(c, 0);
        }
    }
}

static void on_message(conn_t *c, int op, const char *p, size_t n);

/* A message as sent, or inflated when compressed (a raw-deflate stream of its own, its
 * 00 00 ff ff tail stripped by the sender, RFC 7692 7.2.2). */
static void deliver(conn_t *c, int op, int compressed, char *data, size_t len) {
    if (!compressed) { on_message(c, op, data, len); return; }
    static const unsigned char tail[4] = {0, 0, 0xff, 0xff};
    z_stream z; memset(&z, 0, sizeof z);
    if (inflateInit2(&z, -15) != Z_OK) return;
    size_t out = 0; int rc = Z_OK;
    for (int part = 0; part < 2 && rc != Z_STREAM_END; part++) {
        z.next_in = part ? (unsigned char *)tail : (unsigned char *)data;
        z.avail_in = part ? 4 : (uInt)len;
        do {
            if (inflated_cap - out < 65536) { inflated_cap = inflated_cap * 2 + 65536; inflated = realloc(inflated, inflated_cap); }
            z.next_out = (unsigned char *)inflated + out; z.avail_out = (uInt)(inflated_cap - out);
            rc = inflate(&z, Z_SYNC_FLUSH);
            out = inflated_cap - z.avail_out;
        } while (rc == Z_OK && z.avail_out == 0);
        if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR) break;
    }
    inflateEnd(&z);
    on_message(c, op, inflated, out);
}

static void on_connected(conn_t *c) {
    int err = 0; socklen_t l = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
    if (err) { connect_errors++; conn_close(c, 0); return; }
    char req[8192];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                     "%sOrigin: http://%s:%d\r\n\r\n",
                     c->line, host, port,
                     offer_deflate ? "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" : "",
                     host, port);
    c->state = S_HANDSHAKE;
    set_events(c, EPOLLIN);
    send_raw(c, req, n);
}

/* ---- a minimal JSON walker: enough to find keys and skip values ---- */
static const char *ws(const char *p, const char *e) { while (p < e && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++; return p; }
static const char *skip_string(const char *p, const char *e) { /* p at opening quote */
    for (p++; p < e; p++) { if (*p == '\\') p++; else if (*p == '"') return p + 1; }
    return e;
}
static const char *skip_value(const char *p, const char *e) {
    p = ws(p, e);
    if (p >= e) return e;
    if (*p == '"') return skip_string(p, e);
    if (*p == '{' || *p == '[') {
        int depth = 0;
        for (; p < e; p++) {
            if (*p == '"') { p = skip_string(p, e) - 1; continue; }
            if (*p == '{' || *p == '[') depth++;
            else if (*p == '}' || *p == ']') { if (--depth == 0) return p + 1; }
        }
        return e;
    }
    while (p < e && *p != ',' && *p != ']' && *p != '}') p++;
    return p;
}

/* Call fn(conn, key, keylen, set) for each key of the object at p. */
static void each_key(conn_t *c, const char *p, const char *e, int set, void (*fn)(conn_t *, const char *, size_t, int)) {
    p = ws(p, e);
    if (p >= e || *p != '{') return;
    p++;
    for (;;) {
        p = ws(p, e);
        if (p >= e || *p == '}') return;
        if (*p == ',') { p++; continue; }
        if (*p != '"') return;
        const char *k = p + 1, *ke = skip_string(p, e) - 1;
        fn(c, k, ke - k, set);
        p = ws(ke + 1, e);
        if (p < e && *p == ':') p++;
        p = skip_value(p, e);
    }
}

static void presence_key(conn_t *c, const char *k, size_t n, int set) {
    if (n < 2 || k[0] != 'c') return;
    long idx = 0;
    for (size_t i = 1; i < n; i++) { if (k[i] < '0' || k[i] > '9') return; idx = idx * 10 + (k[i] - '0'); }
    if (idx >= presence_want) return;
    uint8_t bit = 1u << (idx & 7);
    int has = (c->bits[idx >> 3] & bit) != 0;
    if (set && !has) { c->bits[idx >> 3] |= bit; c->pcount++; }
    else if (!set && has) { c->bits[idx >> 3] &= ~bit; c->pcount--; }
}

/* Find "key": inside an object (shallow scan, good enough for Phoenix payloads). */
static const char *find_key(const char *p, const char *e, const char *key) {
    size_t kl = strlen(key);
    for (; p + kl + 2 < e; p++) {
        if (*p == '"' && memcmp(p + 1, key, kl) == 0 && p[kl + 1] == '"') {
            const char *q = ws(p + kl + 2, e);
            if (q < e && *q == ':') return ws(q + 1, e);
        }
    }
    return NULL;
}

static void check_presence_full(conn_t *c) {
    if (!c->full && c->pcount >= presence_want) {
        c->full = 1;
        if (++full_conns == nconns) { t_presence = mono() - t0; printf("PRESENCE %.3f\n", t_presence); fflush(stdout); }
    }
}

static void on_text(conn_t *c, const char *p, size_t n) {
    const char *e = p + n;
    frames_in++;
    p = ws(p, e);
    if (p >= e || *p != '[') { other_in++; return; }
    p++;
    const char *jr = ws(p, e); p = skip_value(jr, e); p = ws(p, e); if (p < e && *p == ',') p++;
    const char *ref = ws(p, e); p = skip_value(ref, e); p = ws(p, e); if (p < e && *p == ',') p++;
    const char *topic = ws(p, e); p = skip_value(topic, e); const char *topic_end = p; p = ws(p, e); if (p < e && *p == ',') p++;
    const char *ev = ws(p, e); p = skip_value(ev, e); const char *ev_end = p; p = ws(p, e); if (p < e && *p == ',') p++;
    const char *payload = ws(p, e);
    if (ev >= e || *ev != '"') { other_in++; return; }
    const char *evs = ev + 1; size_t evl = ev_end - ev - 2;
    const char *tps = topic + 1; size_t tpl = topic_end - topic - 2;
#define EV_IS(s) (evl == strlen(s) && memcmp(evs, s, evl) == 0)
    if (EV_IS(tick_event)) {
        ticks_total++; c->ticks++;
        if (own_prefix) {
            char own[128];
            int ol = snprintf(own, sizeof own, "%sc%d", own_prefix, c->index);
            if ((size_t)ol != tpl || memcmp(tps, own, tpl) != 0) misrouted++;
        }
        const char *t = find_key(payload, e, "t");
        if (t) {
            int64_t v = 0;
            while (t < e && *t >= '0' && *t <= '9') v = v * 10 + (*t++ - '0');
            int64_t d = wall_us() - v; if (d < 0) d = 0;
            if ((uint64_t)d > lat_max_us) lat_max_us = d;
            if (nlat == latcap) {
                if (latcap >= LATMAX) { lat_dropped++; return; }
                latcap = latcap ? latcap * 2 : 65536;
                lat = realloc(lat, latcap * sizeof *lat); if (!lat) die("realloc");
            }
            lat[nlat++] = d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
        }
    } else if (EV_IS("phx_reply")) {
        replies_in++;
        int ok = 0;
        const char *st = find_key(payload, e, "status");
        if (st && e - st >= 4 && memcmp(st, "\"ok\"", 4) == 0) ok = 1;
        if (*ref == '"' && ref[1] == 'j') {
            if (ok) {
                if (++c->joins_ok == c->ntopics) {
                    if (pace_joins) { in_flight--; start_next(); }
                    if (++joined_conns == nconns) { t_joined = mono() - t0; printf("JOINED %.3f\n", t_joined); fflush(stdout); }
                }
            } else {
                if (join_errors++ == 0) snprintf(first_join_error, sizeof first_join_error, "%.*s", (int)(e - payload > 200 ? 200 : e - payload), payload);
            }
        } else if (*ref == '"' && ref[1] == 'h') hb_replies++;
    } else if (presence_topic && tpl == strlen(presence_topic) && memcmp(tps, presence_topic, tpl) == 0 &&
               (EV_IS("presence_state") || EV_IS("presence_diff"))) {
        if (EV_IS("presence_state")) { presence_state_in++; each_key(c, payload, e, 1, presence_key); }
        else {
            presence_diff_in++;
            const char *j = find_key(payload, e, "joins"); if (j) each_key(c, j, e, 1, presence_key);
            const char *l = find_key(payload, e, "leaves"); if (l) each_key(c, l, e, 0, presence_key);
        }
        check_presence_full(c);
    } else if (EV_IS("presence_state")) presence_state_in++;
    else if (EV_IS("presence_diff")) presence_diff_in++;
    else other_in++;
}

static void on_message(conn_t *c, int op, const char *p, size_t n) {
    if (op == 1) on_text(c, p, n);
    else if (op == 2) { frames_in++; binary_in++; }
}

static void on_readable(conn_t *c) {
    char tmp[65536];
    for (;;) {
        ssize_t n = read(c->fd, tmp, sizeof tmp);
        if (n == 0) { conn_close(c, 1); return; }
        if (n < 0) { if (errno == EAGAIN) break; conn_close(c, 1); return; }
        bytes_in += n;
        buf_append(&c->rbuf, &c->rlen, &c->rcap, tmp, n);
        if ((size_t)n < sizeof tmp) break;
    }
    size_t off = 0;
    if (c->state == S_HANDSHAKE) {
        char *end = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
        if (!end) return;
        if (c->rlen < 12 || memcmp(c->rbuf + 9, "101", 3) != 0) {
            handshake_errors++;
            if (handshake_errors == 1) fprintf(stderr, "handshake refused: %.*s\n", (int)(end - c->rbuf), c->rbuf);
            conn_close(c, 0); start_next(); return;
        }
        off = end + 4 - c->rbuf;
        c->state = S_OPEN; connected++;
        if (!pace_joins) in_flight--;
        if (connected == nconns) { t_connected = mono() - t0; printf("CONNECTED %.3f\n", t_connected); fflush(stdout); }
        c->next_hb = mono() + hb_interval;
        send_joins(c);
        start_next();
    }
    while (c->state == S_OPEN) {
        unsigned char *b = (unsigned char *)c->rbuf + off; size_t avail = c->rlen - off;
        if (avail < 2) break;
        int fin = b[0] & 0x80, rsv1 = b[0] & 0x40, op = b[0] & 0x0f, masked = b[1] & 0x80;
        uint64_t len = b[1] & 0x7f; size_t h = 2;
        if (len == 126) { if (avail < 4) break; len = (b[2] << 8) | b[3]; h = 4; }
        else if (len == 127) { if (avail < 10) break; len = 0; for (int i = 0; i < 8; i++) len = (len << 8) | b[2 + i]; h = 10; }
        if (masked) h += 4;
        if (avail < h + len) break;
        char *pl = (char *)b + h;
        if (masked) for (uint64_t i = 0; i < len; i++) pl[i] ^= b[h - 4 + (i & 3)];
        if (op == 8) { conn_close(c, 1); return; }
        else if (op == 9) { /* ping -> pong */
            char hdr[6 + 125]; size_t m = len > 125 ? 125 : len;
            hdr[0] = (char)0x8a; hdr[1] = (char)(0x80 | m); memset(hdr + 2, 0, 4); memcpy(hdr + 6, pl, m);
            send_raw(c, hdr, 6 + m);
        } else if (op == 10) {
        } else if (op == 0) {
            buf_append(&c->msg, &c->msglen, &c->msgcap, pl, len);
            if (fin) { deliver(c, c->msgop, c->msgz, c->msg, c->msglen); c->msglen = 0; }
        } else if (!fin) {
            c->msgop = op; c->msgz = rsv1; c->msglen = 0; buf_append(&c->msg, &c->msglen, &c->msgcap, pl, len);
        } else deliver(c, op, rsv1, pl, len);
        off += h + len;
    }
    if (c->state == S_CLOSED) return;
    if (off) { memmove(c->rbuf, c->rbuf + off, c->rlen - off); c->rlen -= off; }
    if (c->rlen == 0 && c->rcap > 65536) { free(c->rbuf); c->rbuf = NULL; c->rcap = 0; }
}

static int cmp_u32(const void *a, const void *b) { uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b; return x < y ? -1 : x > y; }

static void print_stats(const char *tag) {
    uint64_t tmin = UINT64_MAX, tmax = 0; long open = 0;
    for (int i = 0; i < nconns; i++) {
        if (conns[i].ticks < tmin) tmin = conns[i].ticks;
        if (conns[i].ticks > tmax) tmax = conns[i].ticks;
        if (conns[i].state == S_OPEN) open++;
    }
    struct rusage ru; getrusage(RUSAGE_SELF, &ru);
    printf("%s {\"conns\":%d,\"open\":%ld,\"connected\":%ld,\"connect_errors\":%ld,\"handshake_errors\":%ld,"
           "\"closed_by_server\":%ld,\"joined_conns\":%ld,\"join_errors\":%ld,\"first_join_error\":",
           tag, nconns, open, connected, connect_errors, handshake_errors, closed_by_server, joined_conns, join_errors);
    putchar('"');
    for (char *q = first_join_error; *q; q++) { if (*q == '"' || *q == '\\') putchar('\\'); putchar(*q >= 32 ? *q : ' '); }
    putchar('"');
    printf(",\"full_presence_conns\":%ld,\"frames_in\":%llu,\"bytes_in\":%llu,\"frames_out\":%llu,\"bytes_out\":%llu,"
           "\"replies_in\":%llu,\"heartbeat_replies\":%llu,\"presence_state_in\":%llu,\"presence_diff_in\":%llu,"
           "\"binary_in\":%llu,\"other_in\":%llu,\"misrouted\":%llu,\"ticks\":%llu,\"ticks_min_per_conn\":%llu,\"ticks_max_per_conn\":%llu,"
           "\"t_connected\":%.3f,\"t_joined\":%.3f,\"t_presence\":%.3f,\"cpu_user_s\":%.3f,\"cpu_sys_s\":%.3f,\"maxrss_kb\":%ld",
           full_conns, (unsigned long long)frames_in, (unsigned long long)bytes_in, (unsigned long long)frames_out,
           (unsigned long long)bytes_out, (unsigned long long)replies_in, (unsigned long long)hb_replies,
           (unsigned long long)presence_state_in, (unsigned long long)presence_diff_in, (unsigned long long)binary_in,
           (unsigned long long)other_in, (unsigned long long)misrouted, (unsigned long long)ticks_total, (unsigned long long)(nconns ? tmin : 0),
           (unsigned long long)tmax, t_connected, t_joined, t_presence, ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6,
           ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6, ru.ru_maxrss);
    if (strcmp(tag, "RESULT") == 0 && nlat) {
        qsort(lat, nlat, sizeof *lat, cmp_u32);
        double sum = 0; for (size_t i = 0; i < nlat; i++) sum += lat[i];
        printf(",\"latency_us\":{\"n\":%zu,\"mean\":%.1f,\"p50\":%u,\"p90\":%u,\"p99\":%u,\"p999\":%u,\"max\":%llu,\"dropped_samples\":%llu}",
               nlat, sum / nlat, lat[nlat / 2], lat[(size_t)(nlat * 0.9)], lat[(size_t)(nlat * 0.99)],
               lat[(size_t)(nlat * 0.999)], (unsigned long long)lat_max_us, (unsigned long long)lat_dropped);
    }
    printf("}\n");
    fflush(stdout);
}

static void on_signal(int s) { (void)s; stop_flag = 1; }

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: %s HOST PORT SPEC_FILE [-c N] [-m S] [-b S] [-e EV] [-p TOPIC -n K] [-s PREFIX] [-J]\n", argv[0]); return 2; }
    host = argv[1]; port = atoi(argv[2]);
    const char *spec = argv[3];
    for (int i = 4; i < argc; i += 2) {
        const char *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(argv[i], "-c")) concurrency = atoi(v);
        else if (!strcmp(argv[i], "-m")) hard_limit = atoi(v);
        else if (!strcmp(argv[i], "-b")) hb_interval = atoi(v);
        else if (!strcmp(argv[i], "-e")) tick_event = v;
        else if (!strcmp(argv[i], "-p")) presence_topic = v;
        else if (!strcmp(argv[i], "-n")) presence_want = atoi(v);
        else if (!strcmp(argv[i], "-s")) own_prefix = v;
        else if (!strcmp(argv[i], "-J")) { pace_joins = 1; i--; }
        else if (!strcmp(argv[i], "-z")) { offer_deflate = 1; i--; }
        else { fprintf(stderr, "unknown option %s\n", argv[i]); return 2; }
    }
    struct rlimit rl; getrlimit(RLIMIT_NOFILE, &rl); rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl);
    signal(SIGPIPE, SIG_IGN); signal(SIGTERM, on_signal); signal(SIGINT, on_signal);
    srand((unsigned)getpid());

    FILE *f = fopen(spec, "r"); if (!f) die(spec);
    size_t cap = 1024; conns = calloc(cap, sizeof *conns);
    char *line = NULL; size_t lcap = 0; ssize_t ll;
    while ((ll = getline(&line, &lcap, f)) > 0) {
        if (line[ll - 1] == '\n') line[--ll] = 0;
        if (!ll) continue;
        if (nconns == (int)cap) { cap *= 2; conns = realloc(conns, cap * sizeof *conns); memset(conns + nconns, 0, (cap - nconns) * sizeof *conns); }
        conn_t *c = &conns[nconns]; c->index = nconns++;
        c->line = strdup(line);
        int fields = 1; for (char *q = c->line; *q; q++) if (*q == '\t') { *q = 0; fields++; }
        c->ntopics = (fields - 1) / 2;
        c->topics = calloc(c->ntopics + 1, sizeof(char *)); c->tokens = calloc(c->ntopics + 1, sizeof(char *));
        char *q = c->line + strlen(c->line) + 1;
        for (int t = 0; t < c->ntopics; t++) { c->topics[t] = q; q += strlen(q) + 1; c->tokens[t] = q; q += strlen(q) + 1; }
        if (presence_topic) c->bits = calloc((presence_want + 7) / 8 + 1, 1);
    }
    fclose(f);
    if (!nconns) { fprintf(stderr, "no sockets in %s\n", spec); return 2; }

    epfd = epoll_create1(0); if (epfd < 0) die("epoll_create1");
    struct epoll_event se = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    int stdin_open = epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &se) == 0;
    char cmd[256]; size_t cmdlen = 0;

    t0 = mono();
    double last_hb_scan = t0;
    start_next();
    struct epoll_event evs[1024];
    while (!stop_flag) {
        int n = epoll_wait(epfd, evs, 1024, (int)(HB_SCAN * 1000));
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int i = 0; i < n; i++) {
            uint32_t id = evs[i].data.u32;
            if (id == UINT32_MAX) {
                ssize_t r = read(0, cmd + cmdlen, sizeof cmd - 1 - cmdlen);
                if (r == 0) { stop_flag = 1; break; }
                if (r < 0) continue;
                cmdlen += r; cmd[cmdlen] = 0;
                char *nl;
                while ((nl = strchr(cmd, '\n'))) {
                    *nl = 0;
                    if (!strcmp(cmd, "stats")) print_stats("STATS");
                    else if (!strcmp(cmd, "quit")) stop_flag = 1;
                    memmove(cmd, nl + 1, cmdlen - (nl + 1 - cmd)); cmdlen -= nl + 1 - cmd; cmd[cmdlen] = 0;
                }
                if (cmdlen >= sizeof cmd - 1) cmdlen = 0;
                continue;
            }
            conn_t *c = &conns[id];
            if (c->state == S_CLOSED) continue;
            if (c->state == S_CONNECTING) { if (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_connected(c); start_next(); continue; }
            if (evs[i].events & EPOLLOUT) flush_out(c);
            if (c->state != S_CLOSED && (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) on_readable(c);
            if (c->state == S_CLOSED) start_next();
        }
        double now = mono();
        if (now - last_hb_scan >= HB_SCAN) {
            /* a socket's next beat follows its last one, not the scan: sockets that opened
             * over a second keep beating over a second instead of all in one scan */
            last_hb_scan = now;
            for (int i = 0; i < nconns; i++)
                if (conns[i].state == S_OPEN && conns[i].next_hb <= now) { conns[i].next_hb += hb_interval; send_heartbeat(&conns[i]); }
        }
        if (now - t0 > hard_limit) { fprintf(stderr, "loadclient: hard lifetime of %d s reached\n", hard_limit); break; }
    }
    (void)stdin_open;
    print_stats("RESULT");
    return 0;
}
