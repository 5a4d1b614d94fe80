// A native gRPC load generator for the benchmarks: CLIENTS channels, each with one
// unary call in flight at a time, sending pre-serialised requests in turn for SECONDS.
//
//   grpc-load ADDRESS METHOD REQUESTS CLIENTS SECONDS
//
// REQUESTS is a file of requests, each a 4-byte little-endian length and the
// serialised message. Client k sends requests k, k + CLIENTS, ... (wrapping), as
// bench.vector's Python clients do. Replies are received whole and not parsed.
// Prints one line: calls=N seconds=S cpu_seconds=C. Any call that fails stops the
// run: its status goes to stderr and the exit status is 1.
//
// One thread drives every channel through one completion queue, so the generator
// costs the machine little CPU beside the server it measures.

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

namespace {

struct Call {
  grpc::ClientContext context;
  grpc::ByteBuffer reply;
  grpc::Status status;
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> reader;
};

struct Client {
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<grpc::GenericStub> stub;
  std::unique_ptr<Call> call;
  size_t next = 0;
};

std::vector<grpc::ByteBuffer> ReadRequests(const char* path) {
  std::ifstream in(path, std::ios::binary);
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<grpc::ByteBuffer> requests;
  size_t offset = 0;
  while (offset + 4 <= data.size()) {
    uint32_t size = 0;
    for (int i = 3; i >= 0; --i) size = (size << 8) | static_cast<unsigned char>(data[offset + i]);
    offset += 4;
    if (offset + size > data.size()) break;
    grpc::Slice slice(data.data() + offset, size);
    requests.emplace_back(&slice, 1);
    offset += size;
  }
  if (offset != data.size()) requests.clear();  // a truncated file: refuse it whole
  return requests;
}

double CpuSeconds() {
  timespec now{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) + static_cast<double>(now.tv_nsec) / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: grpc-load ADDRESS METHOD REQUESTS CLIENTS SECONDS\n");
    return 2;
  }
  const std::string address = argv[1];
  const std::string method = argv[2];
  const std::vector<grpc::ByteBuffer> requests = ReadRequests(argv[3]);
  const int clients = std::atoi(argv[4]);
  const double seconds = std::atof(argv[5]);
  if (requests.empty() || clients < 1 || seconds <= 0) {
    std::fprintf(stderr, "grpc-load: no requests in %s, or CLIENTS/SECONDS not positive\n",
                 argv[3]);
    return 2;
  }

  grpc::CompletionQueue queue;
  std::vector<Client> pool(clients);
  for (int k = 0; k < clients; ++k) {
    grpc::ChannelArguments arguments;
    // A connection of its own for each client, as separate client processes would have.
    arguments.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    pool[k].channel =
        grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), arguments);
    pool[k].stub = std::make_unique<grpc::GenericStub>(pool[k].channel);
    pool[k].next = static_cast<size_t>(k);
  }

  auto start = [&](int k) {
    Client& client = pool[k];
    client.call = std::make_unique<Call>();
    Call& call = *client.call;
    call.reader = client.stub->PrepareUnaryCall(&call.context, method,
                                                requests[client.next % requests.size()], &queue);
    client.next += static_cast<size_t>(clients);
    call.reader->StartCall();
    call.reader->Finish(&call.reply, &call.status, reinterpret_cast<void*>(static_cast<intptr_t>(k)));
  };

  for (int k = 0; k < clients; ++k) {
    if (!pool[k].channel->WaitForConnected(std::chrono::system_clock::now() +
                                           std::chrono::seconds(10))) {
      std::fprintf(stderr, "grpc-load: cannot connect to %s\n", address.c_str());
      return 1;
    }
  }

  const double cpu_started = CpuSeconds();
  const auto started = std::chrono::steady_clock::now();
  const auto stop = started + std::chrono::duration<double>(seconds);
  for (int k = 0; k < clients; ++k) start(k);
  long calls = 0;
  int in_flight = clients;
  void* tag = nullptr;
  bool ok = false;
  while (in_flight > 0 && queue.Next(&tag, &ok)) {
    const int k = static_cast<int>(reinterpret_cast<intptr_t>(tag));
    Call& call = *pool[k].call;
    if (!ok || !call.status.ok()) {
      std::fprintf(stderr, "grpc-load: %s failed: code %d: %s\n", method.c_str(),
                   static_cast<int>(call.status.error_code()),
                   call.status.error_message().c_str());
      return 1;
    }
    ++calls;
    if (std::chrono::steady_clock::now() < stop) {
      start(k);
    } else {
      --in_flight;
    }
  }
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::printf("calls=%ld seconds=%.6f cpu_seconds=%.6f\n", calls, elapsed,
              CpuSeconds() - cpu_started);
  queue.Shutdown();
  while (queue.Next(&tag, &ok)) {
  }
  return 0;
}
