/* The damped travelling wave of travelling_wave.py, in C against libzmq alone (docs/protocol.md).
 *
 *   cc -O2 -o travelling_wave travelling_wave.c -lzmq -lm
 *   travelling_wave ADDRESS SIMULATION_ID ATTEMPT [STEPS]
 *
 * It authenticates with the CURVE keys the trainer issued to this attempt (the JSON in the file
 * $ENGAGE_KEY_FILE names, or in $ENGAGE_KEYS; none: an ipc:// trainer), sends HELLO, reads its
 * JOB (parameters "frequency" and "damping", "resume_from", "heartbeat_interval",
 * "server_timeout"), sends one SAMPLE per step as credit allows, with a HEARTBEAT whenever it
 * has sent nothing for an interval, then DONE, and exits once the trainer acknowledged every
 * sample. The sample of step t is
 * exp(-damping * t * dt) * sin(frequency * (x - t * dt)) * cos(frequency * y) on [0, 2 pi]^2.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

enum { HELLO = 1, SAMPLE = 2, DONE = 3, HEARTBEAT = 4, ERROR = 5, JOB = 16, CREDIT = 17, STOP = 18, ACK = 19 };
enum { GRID = 16 };
static const double DT = 0.1;

#pragma pack(push, 1)
typedef struct {
    char magic[4];
    uint8_t version, kind, dtype, ndim;
    int64_t sim;
    uint32_t attempt, flags;
    int64_t index;
    uint32_t shape[4];
    uint64_t nbytes;
} header_t;
#pragma pack(pop)

static void *sock, *monitor; /* monitor: hears the trainer refuse our keys */
static int64_t sim_id;
static uint32_t attempt;
static double beat = 1.0, server_timeout = 60.0, last_sent, last_heard;
static long credits;
static char job[65536];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void send_msg(uint8_t kind, int64_t index, const void *data, size_t n, int ndim) {
    header_t h = {{'E', 'N', 'G', 'M'}, 1, kind, ndim ? 1 : 0, (uint8_t)ndim, sim_id, attempt, 0, index, {0}, n};
    if (ndim) h.shape[0] = h.shape[1] = GRID;
    zmq_send(sock, &h, sizeof h, ZMQ_SNDMORE);
    zmq_send(sock, data, n, 0);
    last_sent = now();
}

/* A number after "key": in the JOB's JSON (its keys are unique to the protocol). */
static double json_number(const char *text, const char *key, double fallback) {
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\":", key);
    const char *at = strstr(text, pattern);
    return at ? strtod(at + strlen(pattern), NULL) : fallback;
}

/* A 40-character Z85 string after "key": into out (41 bytes); 0 when absent. */
static int json_key(const char *text, const char *key, char *out) {
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\":", key);
    const char *at = strstr(text, pattern);
    if (!at || !(at = strchr(at + strlen(pattern), '"')) || strlen(at + 1) < 41 || at[41] != '"') return 0;
    memcpy(out, at + 1, 40);
    out[40] = 0;
    return 1;
}

/* The CURVE keys the trainer issued to this attempt, from its environment, on the socket; -1
   (after a line saying why) when they cannot be read, or when a tcp:// trainer gave none. */
static int use_keys(const char *address, void *context) {
    char text[4096] = {0}, server[41], public[41], secret[41];
    const char *inline_keys = getenv("ENGAGE_KEYS"), *path = getenv("ENGAGE_KEY_FILE");
    const char *from = "ENGAGE_KEYS";
    if (inline_keys && *inline_keys) {
        snprintf(text, sizeof text, "%s", inline_keys);
    } else if (path && *path) {
        struct stat info;
        if (stat(path, &info) == 0 && (info.st_mode & 077)) { /* as the Python client: keys are private */
            fprintf(stderr, "ENGAGE_KEY_FILE=%s is readable by others (mode %03o); the trainer writes it 0600\n",
                    path, (unsigned)(info.st_mode & 0777));
            return -1;
        }
        FILE *f = fopen(path, "r");
        from = "ENGAGE_KEY_FILE";
        if (!f || !fread(text, 1, sizeof text - 1, f)) {
            fprintf(stderr, "ENGAGE_KEY_FILE=%s: %s\n", path, f ? "empty" : strerror(errno));
            if (f) fclose(f);
            return -1;
        }
        fclose(f);
    } else if (strncmp(address, "ipc://", 6) == 0) {
        return 0; /* an ipc:// trainer: the OS user is the authentication */
    } else {
        fprintf(stderr, "no keys for %s: the trainer gives them in ENGAGE_KEY_FILE or ENGAGE_KEYS "
                        "(only an ipc:// trainer needs none)\n", address);
        return -1;
    }
    if (!json_key(text, "server", server) || !json_key(text, "public", public) || !json_key(text, "secret", secret)) {
        fprintf(stderr, "%s holds no keys of the trainer's: JSON with server, public and secret (Z85, 40 "
                        "characters each)\n", from);
        return -1;
    }
    /* libzmq refuses a string that is no Z85 key (EINVAL): the socket would go on without CURVE */
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, server, 41) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, public, 41) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, secret, 41) != 0) {
        fprintf(stderr, "%s holds keys libzmq refuses (%s): Z85 strings of the trainer's\n", from, zmq_strerror(errno));
        return -1;
    }
    /* the trainer's refusal of these keys (its ZAP handler answers 400) is heard on a monitor */
    if (zmq_socket_monitor(sock, "inproc://engage-auth", ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) == 0) {
        monitor = zmq_socket(context, ZMQ_PAIR);
        zmq_connect(monitor, "inproc://engage-auth");
    }
    return 0;
}

/* Wait up to the next heartbeat for one message; its kind, 0 on none, -1 when stopped or gone. */
static int receive(void) {
    header_t h;
    zmq_pollitem_t items[2] = {{sock, 0, ZMQ_POLLIN, 0}, {monitor, 0, ZMQ_POLLIN, 0}};
    double wait = last_sent + beat - now();
    int ready = zmq_poll(items, monitor ? 2 : 1, (long)(wait > 0 ? wait * 1000 : 0) + 1);
    if (ready > 0 && monitor && (items[1].revents & ZMQ_POLLIN)) {
        uint8_t event[6] = {0};
        uint32_t status = 0;
        zmq_recv(monitor, event, sizeof event, 0); /* event number (16 bits), then its value */
        memcpy(&status, event + 2, sizeof status);
        fprintf(stderr, "the trainer refused this simulation's keys (CURVE authentication failed, status %u): "
                        "they are not the keys it issued to this attempt, or the attempt is over\n", status);
        return -1;
    }
    if (ready > 0 && (items[0].revents & ZMQ_POLLIN)) {
        static char payload[sizeof job];
        int size = zmq_recv(sock, &h, sizeof h, 0);
        int n = zmq_recv(sock, payload, sizeof payload - 1, 0);
        last_heard = now();
        if (size != (int)sizeof h) return 0;
        if (h.kind == JOB && n > 0) {
            n = n < (int)sizeof payload - 1 ? n : (int)sizeof payload - 1;
            memcpy(job, payload, n);
            job[n] = 0;
            beat = json_number(job, "heartbeat_interval", beat);
            server_timeout = json_number(job, "server_timeout", server_timeout);
        } else if (h.kind == CREDIT) {
            credits += h.index;
        } else if (h.kind == STOP) {
            fprintf(stderr, "the trainer stopped this simulation\n");
            return -1;
        }
        return h.kind;
    }
    if (now() - last_heard > server_timeout) {
        fprintf(stderr, "no word from the trainer for %g s\n", server_timeout);
        return -1;
    }
    if (now() - last_sent >= beat) send_msg(HEARTBEAT, 0, "", 0, 0);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: %s ADDRESS SIMULATION_ID ATTEMPT [STEPS]\n", argv[0]);
        return 2;
    }
    sim_id = atoll(argv[2]);
    attempt = (uint32_t)atol(argv[3]);
    long steps = argc == 5 ? atol(argv[4]) : 20, status = 1;
    void *context = zmq_ctx_new();
    sock = zmq_socket(context, ZMQ_DEALER);
    int linger = 2000;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    if (use_keys(argv[1], context) != 0) {
        status = 2; /* no keys, or keys it cannot read: nothing was sent */
    } else if (zmq_connect(sock, argv[1]) == 0) {
        char hello[128];
        int n = snprintf(hello, sizeof hello, "{\"pid\": %d, \"host\": \"c-client\", \"protocol\": 1}", (int)getpid());
        last_heard = now();
        send_msg(HELLO, 0, hello, n, 0);
        int kind = 0;
        while (!job[0] && (kind = receive()) >= 0) {}
        double frequency = json_number(job, "frequency", NAN), damping = json_number(job, "damping", NAN);
        long step = (long)json_number(job, "resume_from", 0);
        if (kind >= 0 && (isnan(frequency) || isnan(damping))) {
            const char *text = "the job needs numeric parameters frequency and damping";
            send_msg(ERROR, 0, text, strlen(text), 0);
            kind = -1;
        }
        float sample[GRID][GRID];
        for (; kind >= 0 && step < steps; step++) {
            double t = step * DT;
            for (int i = 0; i < GRID; i++)
                for (int j = 0; j < GRID; j++) {
                    double x = 2 * M_PI * i / (GRID - 1), y = 2 * M_PI * j / (GRID - 1);
                    sample[i][j] = (float)(exp(-damping * t) * sin(frequency * (x - t)) * cos(frequency * y));
                }
            while (credits == 0 && (kind = receive()) >= 0) {}
            if (kind < 0) break;
            send_msg(SAMPLE, step, sample, sizeof sample, 2);
            credits--;
        }
        if (kind >= 0) {
            send_msg(DONE, steps, "", 0, 0);
            while ((kind = receive()) >= 0 && kind != ACK) {}
            status = kind == ACK ? 0 : 1;
        }
    }
    if (monitor) {
        zmq_socket_monitor(sock, NULL, 0);
        zmq_close(monitor);
    }
    zmq_close(sock);
    zmq_ctx_term(context);
    return (int)status;
}
