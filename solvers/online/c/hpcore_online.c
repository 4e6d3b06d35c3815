/* hpcore online training: C client. See hpcore_online.h and solvers/online/protocol.py. */
#include "hpcore_online.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAGIC 0x48504F4E
#define KIND_DATA 1
#define KIND_BYE 2
#define KIND_HELLO 3
#define TAG_DATA 7401
#define TAG_CREDIT 7402
#define TAG_HELLO 7403
#define MAX_PARAMS 8
#define FIELD_CHARS 32
#define HEADER_NBYTES (16 * 8 + MAX_PARAMS * 8 + FIELD_CHARS)
#define MAX_FIELDS 16

static struct {
    int connected, rank, size, n_trainers, round_robin, nparams;
    long member, attempt;
    double params[MAX_PARAMS], timeout_s;
    MPI_Comm comm, inter;
    long *credits;
    int *acked;
    int n_fields;
    char names[MAX_FIELDS][FIELD_CHARS];
    int sizes[MAX_FIELDS];
    unsigned char *msg;
    size_t msg_nbytes;
} S;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static void nap(void) {
    struct timespec t = {0, 200000};
    nanosleep(&t, NULL);
}

static int fail(const char *what) {
    fprintf(stderr, "hpcore_online: rank %d/%d: %s\n", S.rank, S.size, what);
    return 1;
}

static void header(unsigned char *out, int kind, long time_step, long local_size, const char *field);
static void wait_draining(MPI_Request *req, const char *what);

static int read_port(const char *path, char *port, double timeout_s) {
    double deadline = now_s() + timeout_s;
    for (;;) {
        FILE *f = fopen(path, "r");
        if (f) {
            static char text[8192];
            size_t n = fread(text, 1, sizeof text - 1, f);
            fclose(f);
            text[n] = 0;
            char *end = strstr(text, "\n# end\n");
            if (end && strncmp(text, "0 ", 2) == 0) {
                char *nl = strchr(text, '\n');
                size_t len = (size_t)(nl - text - 2);
                if (len >= MPI_MAX_PORT_NAME) return 1;
                memcpy(port, text + 2, len);
                port[len] = 0;
                return 0;
            }
        }
        if (now_s() > deadline) return 1;
        nap();
    }
}

static int connect_to_trainer(MPI_Comm comm) {
    const char *server = getenv("HPCORE_ONLINE_SERVER");
    const char *v;
    char port[MPI_MAX_PORT_NAME + 1] = {0};
    int ok = 1;
    S.comm = comm;
    MPI_Comm_rank(comm, &S.rank);
    MPI_Comm_size(comm, &S.size);
    S.member = (v = getenv("HPCORE_ONLINE_MEMBER")) ? atol(v) : 0;
    S.attempt = (v = getenv("HPCORE_ONLINE_ATTEMPT")) ? atol(v) : 0;
    S.timeout_s = (v = getenv("HPCORE_ONLINE_TIMEOUT_S")) ? atof(v) : 300.0;
    S.round_robin = !((v = getenv("HPCORE_ONLINE_ROUTING")) && strcmp(v, "one") == 0);
    S.nparams = 0;
    if ((v = getenv("HPCORE_ONLINE_PARAMS")) && *v) {  /* comma-separated numbers, at most MAX_PARAMS */
        for (;;) {
            char *end;
            double p = strtod(v, &end);
            if (end == v || (*end != ',' && *end != '\0')) {
                ok = !fail("HPCORE_ONLINE_PARAMS: comma-separated numbers expected");
                break;
            }
            if (S.nparams == MAX_PARAMS) {
                ok = !fail("HPCORE_ONLINE_PARAMS: more than 8 parameters do not fit the message header");
                break;
            }
            S.params[S.nparams++] = p;
            if (*end == '\0') break;
            v = end + 1;
        }
    }
    if (S.rank == 0 && ok) {
        if (!server) ok = !fail("HPCORE_ONLINE_SERVER is not set: not started as an online member");
        else if (read_port(server, port, S.timeout_s)) ok = !fail("no complete port file (HPCORE_ONLINE_SERVER)");
        if (ok) {  /* ask the trainer to accept: it does so between two training steps */
            char req[4096];
            snprintf(req, sizeof req, "%s.connect-%ld-%ld", server, S.member, S.attempt);
            FILE *f = fopen(req, "w");
            if (f) fclose(f); else ok = !fail("cannot create the connect request file");
            /* connect only when the trainer answers (it accepts one member at a time) */
            snprintf(req, sizeof req, "%s.go-%ld-%ld", server, S.member, S.attempt);
            double deadline = now_s() + S.timeout_s;
            while (ok && (f = fopen(req, "r")) == NULL) {
                if (now_s() > deadline) ok = !fail("the trainer did not answer the connect request");
                else nap();
            }
            if (f) { fclose(f); remove(req); }
        }
    }
    MPI_Bcast(&ok, 1, MPI_INT, 0, comm);
    if (!ok) return 1;
    if (MPI_Comm_connect(port, MPI_INFO_NULL, 0, comm, &S.inter) != MPI_SUCCESS) return fail("MPI_Comm_connect failed");
    MPI_Comm_set_errhandler(S.inter, MPI_ERRORS_RETURN);
    MPI_Comm_remote_size(S.inter, &S.n_trainers);
    S.credits = calloc((size_t)S.n_trainers, sizeof *S.credits);
    S.acked = calloc((size_t)S.n_trainers, sizeof *S.acked);
    S.connected = 1;
    /* both groups hold the new intercommunicator before the first message; non-blocking, as on the
     * trainer's side (a nonblocking collective does not match a blocking one) */
    MPI_Request barrier;
    MPI_Ibarrier(S.inter, &barrier);
    wait_draining(&barrier, "no barrier with the trainer after connecting within HPCORE_ONLINE_TIMEOUT_S: aborting the member");
    if (S.rank == 0) {  /* who we are, so the trainer can tell us from a stand-in (protocol.py) */
        unsigned char hello[HEADER_NBYTES];
        MPI_Request req;
        header(hello, KIND_HELLO, -1, 0, "hello");
        if (MPI_Isend(hello, HEADER_NBYTES, MPI_BYTE, 0, TAG_HELLO, S.inter, &req) != MPI_SUCCESS)
            return fail("MPI_Isend of the hello failed");
        wait_draining(&req, "hello to trainer rank 0 not delivered within HPCORE_ONLINE_TIMEOUT_S: aborting the member");
    }
    return 0;
}

int hpcore_online_init(const char *field_name, int local_size, MPI_Comm comm) {
    if (!S.connected && connect_to_trainer(comm)) return 1;
    if (!field_name || !*field_name || strlen(field_name) >= FIELD_CHARS) return fail("field_name: 1 to 31 bytes expected");
    if (local_size < 0) return fail("local_size: expected >= 0");
    for (int i = 0; i < S.n_fields; ++i)
        if (strcmp(S.names[i], field_name) == 0) { S.sizes[i] = local_size; return 0; }
    if (S.n_fields == MAX_FIELDS) return fail("more than 16 fields");
    strcpy(S.names[S.n_fields], field_name);
    S.sizes[S.n_fields++] = local_size;
    return 0;
}

static void header(unsigned char *out, int kind, long time_step, long local_size, const char *field) {
    int64_t ints[16] = {MAGIC, kind, S.member, S.attempt, time_step, S.rank, S.size, local_size, S.nparams};
    memset(out, 0, HEADER_NBYTES);
    memcpy(out, ints, sizeof ints);
    memcpy(out + 128, S.params, sizeof(double) * (size_t)S.nparams);
    strncpy((char *)out + 192, field, FIELD_CHARS - 1);
}

/* Receive every credit message that has arrived; -1 is a trainer rank's goodbye acknowledgement.
 * Matched probes on any source, attributed by the status (a source-specific probe can match another
 * rank's message on the libfabric sockets provider: see solvers/online/server.py). */
static void drain(void) {
    for (;;) {
        int flag = 0;
        MPI_Message msg;
        MPI_Status st;
        MPI_Improbe(MPI_ANY_SOURCE, TAG_CREDIT, S.inter, &flag, &msg, &st);
        if (!flag) return;
        int64_t n;
        MPI_Mrecv(&n, 1, MPI_INT64_T, &msg, MPI_STATUS_IGNORE);
        if (st.MPI_SOURCE < 0 || st.MPI_SOURCE >= S.n_trainers) continue;
        if (n < 0) S.acked[st.MPI_SOURCE] = 1; else S.credits[st.MPI_SOURCE] += n;
    }
}

/* Drain credits until the request completes (never block in MPI while the trainer sends to us). */
static void wait_draining(MPI_Request *req, const char *what) {
    double deadline = now_s() + S.timeout_s;
    for (;;) {
        int done = 0;
        drain();
        MPI_Test(req, &done, MPI_STATUS_IGNORE);
        if (done) return;
        if (now_s() > deadline) { fail(what); MPI_Abort(S.comm, 3); }
        nap();
    }
}

static int take_credit(int dest) {
    double deadline = now_s() + S.timeout_s;
    for (;;) {
        drain();
        if (S.credits[dest] > 0) { S.credits[dest]--; return 0; }
        if (now_s() > deadline) {
            fail("no credit from the trainer within HPCORE_ONLINE_TIMEOUT_S: aborting the member");
            MPI_Abort(S.comm, 3);
        }
        nap();
    }
}

int hpcore_online_send(const char *field_name, const double *values, int time_step) {
    int i;
    if (!S.connected) return fail("send before init");
    for (i = 0; i < S.n_fields && strcmp(S.names[i], field_name); ++i) {}
    if (i == S.n_fields) return fail("send of a field that init did not declare");
    size_t nbytes = HEADER_NBYTES + 8 * (size_t)S.sizes[i];
    if (nbytes > S.msg_nbytes) { free(S.msg); S.msg = malloc(nbytes); S.msg_nbytes = nbytes; }
    header(S.msg, KIND_DATA, time_step, S.sizes[i], field_name);
    memcpy(S.msg + HEADER_NBYTES, values, 8 * (size_t)S.sizes[i]);
    int dest = S.round_robin ? (int)((S.member + time_step) % S.n_trainers) : 0;
    take_credit(dest);
    MPI_Request req;
    if (MPI_Isend(S.msg, (int)nbytes, MPI_BYTE, dest, TAG_DATA, S.inter, &req) != MPI_SUCCESS) return fail("MPI_Isend failed");
    wait_draining(&req, "send to the trainer not complete within HPCORE_ONLINE_TIMEOUT_S: aborting the member");
    return 0;
}

int hpcore_online_finalize(void) {
    unsigned char bye[HEADER_NBYTES];
    if (!S.connected) return 0;
    header(bye, KIND_BYE, -1, 0, "bye");
    MPI_Request *reqs = malloc(sizeof *reqs * (size_t)S.n_trainers);
    for (int d = 0; d < S.n_trainers; ++d) MPI_Isend(bye, HEADER_NBYTES, MPI_BYTE, d, TAG_DATA, S.inter, &reqs[d]);
    for (int d = 0; d < S.n_trainers; ++d)
        wait_draining(&reqs[d], "goodbye not delivered within HPCORE_ONLINE_TIMEOUT_S: aborting the member");
    free(reqs);
    /* drain credits up to every trainer rank's acknowledgement (-1), its last message to us */
    double deadline = now_s() + S.timeout_s;
    for (;;) {
        int all = 1;
        drain();
        for (int d = 0; d < S.n_trainers; ++d) all &= S.acked[d];
        if (all) break;
        if (now_s() > deadline) {
            fail("no goodbye from the trainer within HPCORE_ONLINE_TIMEOUT_S: aborting the member");
            MPI_Abort(S.comm, 3);
        }
        nap();
    }
    MPI_Comm_disconnect(&S.inter);
    free(S.credits);
    free(S.acked);
    free(S.msg);
    memset(&S, 0, sizeof S);
    return 0;
}

int hpcore_online_init_f(const char *field_name, int local_size, MPI_Fint comm) {
    return hpcore_online_init(field_name, local_size, MPI_Comm_f2c(comm));
}
