#include "core/dist.h"

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <climits>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#ifdef MIXTRAL_HAVE_MPI
#include <mpi.h>
#endif

namespace mixtral::dist {
namespace {

struct State {
  bool mpi = false;  // MPI_Init ran (and MPI_Finalize has not)
  int rank = 0, size = 1, local_size = 1;
  std::string host;
  size_t exchanged = 0;
};

State& state() {
  static State s;
  return s;
}

std::string this_host() {
  char name[HOST_NAME_MAX + 1] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0) return "?";
  return name;
}

// Whether a process manager started this process as one rank of a job: Open MPI's mpirun (and MPICH's
// hydra, PMIx launchers) say so in the environment. Without it MPI is not started at all, so a plain run
// of an MPI build behaves exactly as a build without MPI.
bool launched_by_mpirun() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"})
    if (std::getenv(v)) return true;
  return false;
}

#ifdef MIXTRAL_HAVE_MPI
// How long one expert exchange may wait for the other ranks: MIXTRAL_MPI_TIMEOUT seconds, else 60 (a
// layer's experts over a long prefill chunk on a slow host take seconds, not a minute).
double exchange_timeout_s() {
  static const double t = [] {
    const char* v = std::getenv("MIXTRAL_MPI_TIMEOUT");
    const double x = v ? std::atof(v) : 0.0;
    return x > 0 ? x : 60.0;
  }();
  return t;
}

// Every MPI call's result: an error (a peer died, a connection dropped) ends the job with one line.
void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  MPI_Error_string(rc, text, &len);
  abort(rank_name(state().rank) + ": " + what + " failed: " + text +
            " (a rank died or lost its connection; stopping the job)",
        1);
}
#endif

}  // namespace

Status init(int* argc, char*** argv) {
  State& s = state();
  s.host = this_host();
  if (!launched_by_mpirun()) return {};
#ifdef MIXTRAL_HAVE_MPI
  // MPI starts threads of its own: they must never take SIGINT/SIGTERM, which the commands handle (serve
  // drains on them) or die of on the main thread.
  sigset_t stop, before;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, &before);
  int provided = 0;
  const int rc = MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided);
  pthread_sigmask(SIG_SETMASK, &before, nullptr);
  if (rc != MPI_SUCCESS) return Error::io("MPI would not start (MPI_Init_thread failed) on " + s.host);
  s.mpi = true;
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  if (provided < MPI_THREAD_SERIALIZED)
    return Error::io(
        "this MPI library cannot be called from a thread other than main's (MPI_THREAD_SERIALIZED)");
  MPI_Comm_rank(MPI_COMM_WORLD, &s.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &s.size);
  MPI_Comm local;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, s.rank, MPI_INFO_NULL, &local);
  MPI_Comm_size(local, &s.local_size);
  MPI_Comm_free(&local);
  return {};
#else
  (void)argc;
  (void)argv;
  if (const char* n = std::getenv("OMPI_COMM_WORLD_SIZE"); n && std::atoi(n) > 1)
    return Error::usage(
        "this build has no MPI (configure with -DMIXTRAL_MPI=ON where Open MPI is installed)");
  return {};
#endif
}

void finalize() {
  State& s = state();
#ifdef MIXTRAL_HAVE_MPI
  if (s.mpi) MPI_Finalize();
#endif
  s.mpi = false;
  s.rank = 0;
  s.size = 1;
  s.local_size = 1;
}

int rank() {
  return state().rank;
}
int size() {
  return state().size;
}
int local_size() {
  return state().local_size;
}
const std::string& host() {
  return state().host;
}
size_t bytes_exchanged() {
  return state().exchanged;
}

std::string rank_name(int r) {
  if (r == state().rank) return "rank " + std::to_string(r) + " on " + state().host;
  return "rank " + std::to_string(r);
}

void broadcast(void* data, size_t n) {
  if (size() == 1 || n == 0) return;
#ifdef MIXTRAL_HAVE_MPI
  MX_CHECK(n <= static_cast<size_t>(INT_MAX), "broadcast of %zu bytes", n);
  check(MPI_Bcast(data, static_cast<int>(n), MPI_BYTE, 0, MPI_COMM_WORLD), "the step broadcast");
#endif
}

void allgather_in_place(void* data, const size_t* counts, const size_t* displs) {
  if (size() == 1) return;
#ifdef MIXTRAL_HAVE_MPI
  State& s = state();
  std::vector<int> c(static_cast<size_t>(s.size)), d(static_cast<size_t>(s.size));
  for (int r = 0; r < s.size; ++r) {
    const auto i = static_cast<size_t>(r);
    MX_CHECK(counts[i] <= static_cast<size_t>(INT_MAX) && displs[i] <= static_cast<size_t>(INT_MAX),
             "exchange segment of %zu bytes at %zu", counts[i], displs[i]);
    c[i] = static_cast<int>(counts[i]);
    d[i] = static_cast<int>(displs[i]);
    s.exchanged += counts[i];  // received, or sent (size - 1 times) for this rank's own
  }
  s.exchanged += counts[static_cast<size_t>(s.rank)] * static_cast<size_t>(s.size - 2);
  MPI_Request req;
  check(MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, data, c.data(), d.data(), MPI_BYTE,
                        MPI_COMM_WORLD, &req),
        "the expert exchange");
  // A rank that stops answering (stopped, or its host or link gone without a reset) would leave the others
  // waiting here forever: past the deadline the job ends instead.
  const double deadline = MPI_Wtime() + exchange_timeout_s();
  for (int done = 0;;) {
    check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), "the expert exchange");
    if (done) break;
    if (MPI_Wtime() > deadline)
      abort(rank_name(s.rank) + ": the expert exchange got no answer from the other ranks for " +
                std::to_string(static_cast<int>(exchange_timeout_s())) +
                " s (a rank stopped or lost its connection; MIXTRAL_MPI_TIMEOUT sets the wait); stopping the "
                "job",
            1);
    sched_yield();
  }
#else
  (void)data;
  (void)counts;
  (void)displs;
#endif
}

Status agree(const Status& mine) {
  if (size() == 1) return mine;
#ifdef MIXTRAL_HAVE_MPI
  struct Report {
    int32_t failed;
    int32_t kind;
    char message[1016];
  };
  State& s = state();
  Report r{};
  if (!mine.ok()) {
    r.failed = 1;
    r.kind = static_cast<int32_t>(mine.error().kind);
    const std::string m = rank_name(s.rank) + ": " + mine.error().message;
    std::snprintf(r.message, sizeof(r.message), "%s", m.c_str());
  }
  std::vector<Report> all(static_cast<size_t>(s.size));
  check(MPI_Allgather(&r, sizeof(Report), MPI_BYTE, all.data(), sizeof(Report), MPI_BYTE, MPI_COMM_WORLD),
        "gathering the ranks' status");
  for (const Report& x : all)
    if (x.failed) return Error{static_cast<ErrorKind>(x.kind), std::string(x.message)};
  return {};
#else
  return mine;
#endif
}

void abort(const std::string& message, int code) {
  std::fprintf(stderr, "mixtral: %s\n", message.c_str());
  std::fflush(stderr);
#ifdef MIXTRAL_HAVE_MPI
  if (state().mpi) MPI_Abort(MPI_COMM_WORLD, code);
#endif
  std::_Exit(code);
}

}  // namespace mixtral::dist
