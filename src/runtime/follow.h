// Under mpirun, rank 0 runs the command and the other ranks follow it: rank 0 sends each forward step
// (Runtime::step) to them before computing it, every rank computes it (attention and the router whole,
// its own experts, the expert outputs exchanged: moe.h), and the followers drop the logits. The messages,
// all from rank 0 to every other rank (dist::broadcast):
//   load  the model to load (the engine's EngineCore::load), answered by every rank's status (dist::agree)
//   step  a step's entries, their block tables and the KV cache they go to (its id and size)
//   drop  a KV cache rank 0 has destroyed
//   end   rank 0's command is done: the followers exit
// A job of one sends nothing.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "model/weights.h"

namespace mixtral::follow {

enum class Kind : int32_t { kLoad = 1, kStep = 2, kDrop = 3, kEnd = 4 };

// A message body: 32-bit words.
using Words = std::vector<int32_t>;

// Rank 0: sends a message to every other rank.
void send(Kind kind, const Words& body);
// The other ranks: the next message from rank 0.
Kind receive(Words& body);

// Strings in a message body (a length word, then the bytes in words).
void put_string(Words& body, const std::string& s);
std::string get_string(const Words& body, size_t& at);

// A follower: runs every step rank 0 sends on model m (its own KV caches, the same size and contents as
// rank 0's) until another message (load or end) arrives, and returns that one (its body in body).
Kind follow_steps(const Model& m, ThreadPool& pool, Words& body);

}  // namespace mixtral::follow
