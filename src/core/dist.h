// The processes of one job under mpirun (expert parallelism, docs/architecture.md "Several processes"):
// this process's rank and the few collective operations the engine needs. A build without MPI
// (MIXTRAL_MPI off), or a process that mpirun did not start, is a job of one: rank 0 of 1, and every
// operation below returns at once.
//
// Rank 0 runs the command; the other ranks follow its forward steps (runtime/follow.h). Only one thread of
// a process calls these at a time (the one running forward steps).
#pragma once

#include <cstddef>
#include <string>

#include "core/result.h"

namespace mixtral::dist {

// Joins the job when mpirun started this process (its environment says so) and the build has MPI; else a
// job of one. Call once, first in main. An error: MPI would not start (one line, the caller exits 1).
Status init(int* argc, char*** argv);
// Leaves the job (MPI_Finalize); after it, size() is 1.
void finalize();

int rank();
int size();
int local_size();  // ranks on this host (threads default to this host's cores / local_size)
inline bool active() {
  return size() > 1;
}
const std::string& host();  // this rank's host name
// "rank R on HOST": how messages name a rank.
std::string rank_name(int r);

// Rank 0's bytes [n] into every rank's data [n].
void broadcast(void* data, size_t n);
// Every rank ends with every rank's segment: rank r's bytes [counts[r]] at data + displs[r]. Each rank's
// own segment is already in place. counts, displs: [size()].
void allgather_in_place(void* data, const size_t* counts, const size_t* displs);
// Every rank's status, gathered: ok when all are; else the lowest failing rank's error, its message
// prefixed with that rank's name ("rank 1 on host-b: ..."), on every rank.
Status agree(const Status& mine);
// Ends the whole job now: one line on stderr, then every rank exits with code.
[[noreturn]] void abort(const std::string& message, int code);

// Bytes this process has sent and received through allgather_in_place since start (the exchange's cost).
size_t bytes_exchanged();

}  // namespace mixtral::dist
