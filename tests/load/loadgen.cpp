// loadgen.cpp - a closed-loop load generator for the echo labs (TCP, and UDP for lab 01).
//
// One thread and one epoll instance drive N TCP connections (or N connected UDP sockets).
// Each keeps K messages of S bytes in flight: when a reply has come back, checked byte for
// byte against what was sent, the next message goes out. The server sets the pace (a
// closed loop), so the figures say what it can do, not what we asked of it.
//
//   join      connect, send one message, wait for its echo; at most --connect-batch
//             connections at a time, so a slow acceptor never sees its backlog overflow
//   warm-up   the full load, not counted (page faults, thread stacks, TCP windows)
//   window    the full load, counted: round trips, latency histogram, server CPU
//   drain     no new messages; wait for those in flight
//
// --idle-connections M adds M connections that join and then sit, as most of a real
// server's connections do: what it costs a server to watch many while serving a few.
//
// --idle instead joins N connections, reads the server's memory, and checks that every
// connection still echoes: how many connections a model holds, and what each one costs.
//
// The server's side comes from /proc: CPU time of the process given by --server-pid with
// its threads and every descendant (lab 04 forks one child per connection), counted in
// clock ticks, and their resident memory (RSS, and PSS, which shares each page among the
// processes that map it, so forked children are not charged for the same page twice).
#include <dirent.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "common/args.hpp"
#include "common/endpoint.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/signals.hpp"

namespace {

constexpr std::size_t kReadChunk =
    std::size_t{64} * 1024;                        // bytes per read(); also the largest datagram
constexpr int kMaxEvents = 1024;                   // events taken per epoll_wait()
constexpr std::size_t kUdpSeqDigits = 16;          // UDP messages start with their number in hex
constexpr std::int64_t kScanEveryNs = 50'000'000;  // how often timeouts are looked for

constexpr const char* kUsage =
    R"(usage: loadgen --port N [--host ADDR] [--udp] [--connections N] [--depth K] [--size S]
               [--idle-connections M] [--duration SECONDS] [--warmup SECONDS]
               [--server-pid PID] [--idle] [--connect-batch N] [--timeout SECONDS] [--json]
Closed-loop load for an echo server on this machine (loopback addresses only).
  -H, --host ADDR          server address (default 127.0.0.1)
  -p, --port N             server port (required)
      --udp                UDP datagrams (lab 01) instead of a TCP stream
      --connections N      connections, or UDP sockets (default 1)
      --depth K            messages in flight per connection (default 1)
      --size S             bytes per message (default 64; UDP needs at least 17)
      --idle-connections M M more connections that join and then send nothing (default 0)
      --duration SECONDS   measured window (default 2)
      --warmup SECONDS     load before the window, not counted (default 0.5)
      --server-pid PID     read this process's CPU and memory, with its descendants
      --idle               idle capacity: join N connections, report memory, echo once more
      --connect-batch N    connections joining at once (default 64)
      --timeout SECONDS    a reply later than this is lost (UDP) or a failure (default 2)
      --json               one JSON object on stdout instead of text
      --help               this text
)";

std::int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

struct Options {
    bool udp = false;
    long long connections = 1;
    long long idle_connections = 0;
    long long depth = 1;
    long long size = 64;
    double duration = 2.0;
    double warmup = 0.5;
    long long server_pid = 0;
    bool idle = false;
    long long connect_batch = 64;
    double timeout = 2.0;
    bool json = false;
};

// ------------------------------------------------------------------------- the histogram

// Latencies in nanoseconds, in log-linear buckets: 64 sub-buckets per power of two, so any
// value is known to within 1/64 (1.6%) in a fixed 2,800 counters, however long the run.
class Histogram {
  public:
    Histogram() : counts_(kSubBuckets * (kMaxExponent + 1), 0) {}

    void add(std::int64_t ns) {
        const auto value = static_cast<std::uint64_t>(std::max<std::int64_t>(ns, 0));
        ++counts_[std::min(index(value), counts_.size() - 1)];
        ++total_;
        sum_ += value;
        max_ = std::max(max_, value);
    }

    [[nodiscard]] std::uint64_t total() const noexcept { return total_; }
    [[nodiscard]] double max_us() const noexcept { return static_cast<double>(max_) / 1e3; }
    [[nodiscard]] double mean_us() const noexcept {
        return total_ ? static_cast<double>(sum_) / static_cast<double>(total_) / 1e3 : 0.0;
    }
    // The smallest bucket's upper edge below which a fraction q of the samples fall.
    [[nodiscard]] double percentile_us(double q) const {
        if (total_ == 0) return 0.0;
        const auto rank = static_cast<std::uint64_t>(q * static_cast<double>(total_ - 1)) + 1;
        std::uint64_t seen = 0;
        for (std::size_t i = 0; i < counts_.size(); ++i) {
            seen += counts_[i];
            if (seen >= rank) return static_cast<double>(std::min(upper(i), max_)) / 1e3;
        }
        return max_us();
    }

  private:
    static constexpr std::size_t kSubBits = 6;
    static constexpr std::size_t kSubBuckets = std::size_t{1} << kSubBits;
    static constexpr std::size_t kMaxExponent = 43;  // 2^49 ns: six days

    // Values below 64 have a bucket each; above, 64 buckets per power of two.
    static std::size_t index(std::uint64_t v) {
        if (v < kSubBuckets) return static_cast<std::size_t>(v);
        const auto exponent = static_cast<std::size_t>(63 - __builtin_clzll(v)) - kSubBits;
        const auto sub = static_cast<std::size_t>(v >> exponent) - kSubBuckets;
        return kSubBuckets + exponent * kSubBuckets + sub;
    }
    static std::uint64_t upper(std::size_t i) {
        if (i < kSubBuckets) return i;
        const std::size_t exponent = (i - kSubBuckets) / kSubBuckets;
        const std::uint64_t sub = (i - kSubBuckets) % kSubBuckets + kSubBuckets;
        return ((sub + 1) << exponent) - 1;
    }

    std::vector<std::uint64_t> counts_;
    std::uint64_t total_ = 0;
    std::uint64_t sum_ = 0;
    std::uint64_t max_ = 0;
};

// ------------------------------------------------------------------ the server, from /proc

struct ServerSample {
    double cpu_seconds = 0;  // user + system of every process, with reaped children's
    long long rss_kib = 0;
    long long pss_kib = -1;  // -1: not read
    int processes = 0;
};

struct ProcEntry {
    int pid = 0;
    int ppid = 0;
    int pgrp = 0;
    double own_seconds = 0;       // user + system of all its threads, live and ended
    double children_seconds = 0;  // of its children that have been reaped
    long long rss_pages = 0;
};

// /proc/PID/stat: "pid (comm) state ppid pgrp ...". comm may hold spaces and parentheses,
// so the fields are counted from the last ')'.
bool read_stat(int pid, ProcEntry* entry) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
    std::string text;
    if (!std::getline(in, text)) return false;
    const auto close = text.rfind(')');
    if (close == std::string::npos) return false;
    std::istringstream fields(text.substr(close + 1));
    std::string skip;
    unsigned long long utime = 0, stime = 0;
    long long cutime = 0, cstime = 0;
    fields >> skip >> entry->ppid >> entry->pgrp;  // fields 3, 4, 5
    for (int i = 6; i <= 13; ++i)
        fields >> skip;                            // session .. majflt
    fields >> utime >> stime >> cutime >> cstime;  // fields 14 to 17
    for (int i = 18; i <= 23; ++i)
        fields >> skip;          // priority .. vsize
    fields >> entry->rss_pages;  // field 24
    if (!fields) return false;
    const auto hz = static_cast<double>(sysconf(_SC_CLK_TCK));
    entry->pid = pid;
    entry->own_seconds = static_cast<double>(utime + stime) / hz;
    entry->children_seconds = static_cast<double>(cutime + cstime) / hz;
    return true;
}

// The same CPU time in nanoseconds, summed over the live threads' schedstat. stat counts
// in clock ticks (10 ms) per process, so a thousand forked children that ran 3 ms each
// would read as zero there.
double threads_runtime_seconds(int pid) {
    const std::string tasks = "/proc/" + std::to_string(pid) + "/task";
    DIR* dir = opendir(tasks.c_str());
    if (dir == nullptr) return 0;
    double total = 0;
    while (const dirent* d = readdir(dir)) {
        if (d->d_name[0] == '.') continue;
        std::ifstream in(tasks + "/" + d->d_name + "/schedstat");
        unsigned long long runtime_ns = 0;
        if (in >> runtime_ns) total += static_cast<double>(runtime_ns) / 1e9;
    }
    closedir(dir);
    return total;
}

std::vector<ProcEntry> all_processes() {
    std::vector<ProcEntry> out;
    DIR* dir = opendir("/proc");
    if (dir == nullptr) return out;
    while (const dirent* d = readdir(dir)) {
        long long pid = 0;
        ProcEntry entry;
        if (lab::parse_integer(d->d_name, 1, 1 << 30, &pid) &&
            read_stat(static_cast<int>(pid), &entry)) {
            out.push_back(entry);
        }
    }
    closedir(dir);
    return out;
}

long long pss_kib(int pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/smaps_rollup");
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("Pss:", 0) == 0) return std::strtoll(line.c_str() + 4, nullptr, 10);
    }
    return 0;
}

// The server, its descendants, and (when it leads its own process group, as the bench
// and the tests start it) the rest of its group; never this program itself.
ServerSample sample_server(int server, bool with_pss) {
    ServerSample sample;
    if (server <= 0) return sample;
    const auto procs = all_processes();
    std::map<int, std::vector<int>> children;
    for (const auto& p : procs)
        children[p.ppid].push_back(p.pid);
    std::set<int> included{server};
    std::vector<int> todo{server};
    while (!todo.empty()) {
        const int parent = todo.back();
        todo.pop_back();
        for (int child : children[parent]) {
            if (included.insert(child).second) todo.push_back(child);
        }
    }
    const bool leader = getpgid(server) == server;
    const long page_kib = sysconf(_SC_PAGESIZE) / 1024;
    if (with_pss) sample.pss_kib = 0;
    for (const auto& p : procs) {
        const bool in_tree = included.contains(p.pid);
        if (p.pid == getpid() || !(in_tree || (leader && p.pgrp == server))) continue;
        // Threads that have ended are only in stat; live ones are exact in schedstat.
        sample.cpu_seconds += std::max(p.own_seconds, threads_runtime_seconds(p.pid));
        sample.cpu_seconds += p.children_seconds;
        sample.rss_kib += p.rss_pages * page_kib;
        if (with_pss) sample.pss_kib += pss_kib(p.pid);
        ++sample.processes;
    }
    return sample;
}

double process_cpu_seconds() {
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    const auto seconds = [](const timeval& tv) {
        return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6;
    };
    return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

// ---------------------------------------------------------------------------- messages

// Message `seq` of connection `conn`: letters that differ per connection and per message
// (so a reply from the wrong connection, or a repeated one, is caught), ending in '\n'
// for servers that think in lines. A UDP message starts with its number in hex, because
// datagrams may be lost and their replies must be matched to what is outstanding.
void append_message(std::string& out, std::uint32_t conn, std::uint64_t seq, std::size_t size,
                    bool udp) {
    std::size_t i = 0;
    if (udp) {
        char digits[kUdpSeqDigits + 1];
        std::snprintf(digits, sizeof digits, "%016" PRIx64, seq);
        out.append(digits, kUdpSeqDigits);
        i = kUdpSeqDigits;
    }
    for (; i + 1 < size; ++i) {
        out.push_back(static_cast<char>('a' + (std::uint64_t{conn} * 7 + seq * 13 + i) % 26));
    }
    out.push_back('\n');
}

struct Pending {
    std::uint64_t seq;
    std::int64_t sent_ns;
};

struct Conn {
    enum class State { kUnused, kConnecting, kOpen, kDead };
    lab::Fd fd;
    State state = State::kUnused;
    bool joined = false;          // its first echo came back
    std::int64_t started_ns = 0;  // connect() called
    std::uint64_t next_seq = 0;   // number of the next message to send
    std::vector<Pending> in_flight;
    std::string out;  // TCP: bytes not yet accepted by write()
    std::size_t out_done = 0;
    bool watching_out = false;  // EPOLLOUT in the interest set
    std::size_t recv_done = 0;  // TCP: bytes received of the front message
    std::string expect;         // TCP: the front message, as it must come back
};

enum class Phase { kJoin, kWarmup, kWindow, kDrain, kIdleCheck };

struct Report {
    std::uint64_t round_trips = 0;
    double window_s = 0;
    Histogram latency;
    Histogram connect;  // connect() to established
    Histogram join;     // connect() to first echo
    double join_total_s = 0;
    std::uint64_t errors = 0, lost = 0, late = 0, unfinished = 0;
    std::string first_error;
    long long joined = 0, held = -1;
    ServerSample before, window_start, window_end, after;
    double client_cpu_s = 0;
};

// ------------------------------------------------------------------------ the generator

class LoadGen {
  public:
    LoadGen(const Options& options, const lab::Endpoint& server)
        : opt_(options),
          server_(server),
          size_(static_cast<std::size_t>(options.size)),
          conns_(static_cast<std::size_t>(options.connections + options.idle_connections)),
          buffer_(kReadChunk) {
        epoll_.reset(epoll_create1(EPOLL_CLOEXEC));
        if (!epoll_) lab::die("epoll_create1");
    }

    Report run();

  private:
    void join_all();
    void run_until(std::int64_t deadline, bool until_quiet = false);
    void start_connect(std::size_t i);
    void on_event(std::size_t i, std::uint32_t events);
    void on_connected(std::size_t i);
    void send_messages(std::size_t i, long long count);
    void flush(std::size_t i);
    void watch(std::size_t i, bool out);
    void read_stream(std::size_t i);
    void read_datagrams(std::size_t i);
    bool check_stream(std::size_t i, const char* data, std::size_t n);
    void reply_done(std::size_t i, Pending p);
    void fail(std::size_t i, const std::string& why);
    void scan_timeouts();
    void abort_all();

    const Options& opt_;
    const lab::Endpoint& server_;
    const std::size_t size_;
    std::vector<Conn> conns_;
    std::vector<char> buffer_;
    lab::Fd epoll_;
    Phase phase_ = Phase::kJoin;
    std::size_t started_ = 0;    // connections begun so far
    long long joining_ = 0;      // begun, not yet joined or failed
    std::size_t in_flight_ = 0;  // messages sent and not yet answered, over all connections
    std::int64_t last_scan_ = 0;
    Report report_;
};

void LoadGen::fail(std::size_t i, const std::string& why) {
    Conn& c = conns_[i];
    if (c.state == Conn::State::kDead) return;
    if (!c.joined) --joining_;
    c.state = Conn::State::kDead;
    c.fd.reset();  // closing also takes it out of the epoll interest list
    in_flight_ -= c.in_flight.size();
    c.in_flight.clear();
    c.out.clear();
    ++report_.errors;
    if (report_.first_error.empty()) {
        report_.first_error = "connection " + std::to_string(i) + ": " + why;
    }
}

void LoadGen::watch(std::size_t i, bool out) {
    Conn& c = conns_[i];
    epoll_event ev{};
    ev.events = EPOLLIN | (out ? EPOLLOUT : 0u);
    ev.data.u64 = i;
    if (epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, c.fd.get(), &ev) == -1) {
        fail(i, std::string("epoll_ctl: ") + std::strerror(errno));
        return;
    }
    c.watching_out = out;
}

void LoadGen::start_connect(std::size_t i) {
    Conn& c = conns_[i];
    const int type = opt_.udp ? SOCK_DGRAM : SOCK_STREAM;
    c.fd.reset(socket(server_.family(), type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    c.state = Conn::State::kConnecting;
    c.started_ns = now_ns();
    ++started_;
    ++joining_;
    if (!c.fd) return fail(i, std::string("socket: ") + std::strerror(errno));
    // A non-blocking connect() returns at once; the socket turns writable when the
    // handshake is done (TCP), or at once for UDP, where connect() only sets the peer.
    if (connect(c.fd.get(), server_.addr(), server_.size) == -1 && errno != EINPROGRESS) {
        return fail(i, std::string("connect: ") + std::strerror(errno));
    }
    epoll_event ev{};
    ev.events = EPOLLOUT;
    ev.data.u64 = i;
    if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, c.fd.get(), &ev) == -1) {
        return fail(i, std::string("epoll_ctl: ") + std::strerror(errno));
    }
}

void LoadGen::on_connected(std::size_t i) {
    Conn& c = conns_[i];
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c.fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) == -1) err = errno;
    if (err != 0) return fail(i, std::string("connect: ") + std::strerror(err));
    c.state = Conn::State::kOpen;
    report_.connect.add(now_ns() - c.started_ns);
    watch(i, false);
    send_messages(i, 1);  // the join message
}

// Queues `count` messages and writes what the socket takes now.
void LoadGen::send_messages(std::size_t i, long long count) {
    Conn& c = conns_[i];
    for (long long k = 0; k < count && c.state == Conn::State::kOpen; ++k) {
        const std::uint64_t seq = c.next_seq++;
        c.in_flight.push_back(Pending{seq, now_ns()});
        ++in_flight_;
        if (!opt_.udp) {
            append_message(c.out, static_cast<std::uint32_t>(i), seq, size_, false);
            continue;
        }
        std::string datagram;
        append_message(datagram, static_cast<std::uint32_t>(i), seq, size_, true);
        // A datagram the kernel refuses (a full buffer) is as good as lost on the wire:
        // it stays in flight and times out.
        if (send(c.fd.get(), datagram.data(), datagram.size(), 0) == -1 && errno != EAGAIN &&
            errno != ENOBUFS && errno != EINTR) {
            return fail(i, std::string("send: ") + std::strerror(errno));
        }
    }
    if (!opt_.udp) flush(i);
}

// Partial writes are normal on a non-blocking stream: keep the rest, wait for EPOLLOUT.
void LoadGen::flush(std::size_t i) {
    Conn& c = conns_[i];
    while (c.out_done < c.out.size()) {
        const ssize_t n = write(c.fd.get(), c.out.data() + c.out_done, c.out.size() - c.out_done);
        if (n == -1 && errno == EINTR) continue;
        if (n == -1 && errno == EAGAIN) {
            if (!c.watching_out) watch(i, true);
            return;
        }
        if (n == -1) return fail(i, std::string("write: ") + std::strerror(errno));
        c.out_done += static_cast<std::size_t>(n);
    }
    c.out.clear();
    c.out_done = 0;
    if (c.watching_out) watch(i, false);
}

void LoadGen::reply_done(std::size_t i, Pending p) {
    Conn& c = conns_[i];
    const std::int64_t now = now_ns();
    if (!c.joined) {
        c.joined = true;
        --joining_;
        ++report_.joined;
        report_.join.add(now - c.started_ns);
        return;
    }
    if (phase_ == Phase::kWindow) {
        ++report_.round_trips;
        report_.latency.add(now - p.sent_ns);
    }
    if (phase_ == Phase::kWarmup || phase_ == Phase::kWindow) send_messages(i, 1);
}

// Compares a chunk of the stream with the messages in flight, in order.
bool LoadGen::check_stream(std::size_t i, const char* data, std::size_t n) {
    Conn& c = conns_[i];
    while (n > 0) {
        if (c.in_flight.empty()) {
            fail(i, std::to_string(n) + " bytes arrived that were never sent");
            return false;
        }
        if (c.recv_done == 0) {
            c.expect.clear();
            append_message(c.expect, static_cast<std::uint32_t>(i), c.in_flight.front().seq, size_,
                           false);
        }
        const std::size_t take = std::min(n, size_ - c.recv_done);
        const char* want = c.expect.data() + c.recv_done;
        const auto [got_at, want_at] = std::mismatch(data, data + take, want);
        if (got_at != data + take) {
            char why[160];
            std::snprintf(
                why, sizeof why, "message %" PRIu64 " byte %zu: got 0x%02x, want 0x%02x",
                c.in_flight.front().seq, c.recv_done + static_cast<std::size_t>(got_at - data),
                static_cast<unsigned char>(*got_at), static_cast<unsigned char>(*want_at));
            fail(i, why);
            return false;
        }
        c.recv_done += take;
        data += take;
        n -= take;
        if (c.recv_done == size_) {
            c.recv_done = 0;
            const Pending p = c.in_flight.front();
            c.in_flight.erase(c.in_flight.begin());
            --in_flight_;
            reply_done(i, p);
            if (c.state != Conn::State::kOpen) return false;
        }
    }
    return true;
}

void LoadGen::read_stream(std::size_t i) {
    Conn& c = conns_[i];
    while (c.state == Conn::State::kOpen) {
        const ssize_t n = read(c.fd.get(), buffer_.data(), buffer_.size());
        if (n == -1 && errno == EINTR) continue;
        if (n == -1 && errno == EAGAIN) return;
        if (n == -1) return fail(i, std::string("read: ") + std::strerror(errno));
        if (n == 0) return fail(i, "closed by the server");
        if (!check_stream(i, buffer_.data(), static_cast<std::size_t>(n))) return;
    }
}

void LoadGen::read_datagrams(std::size_t i) {
    Conn& c = conns_[i];
    while (c.state == Conn::State::kOpen) {
        const ssize_t n = recv(c.fd.get(), buffer_.data(), buffer_.size(), 0);
        if (n == -1 && errno == EINTR) continue;
        if (n == -1 && errno == EAGAIN) return;
        if (n == -1) return fail(i, std::string("recv: ") + std::strerror(errno));
        const auto size = static_cast<std::size_t>(n);
        if (size != size_) return fail(i, "a datagram of " + std::to_string(size) + " bytes");
        const std::string digits(buffer_.data(), kUdpSeqDigits);
        const std::uint64_t seq = std::strtoull(digits.c_str(), nullptr, 16);
        const auto it = std::find_if(c.in_flight.begin(), c.in_flight.end(),
                                     [seq](const Pending& p) { return p.seq == seq; });
        if (it == c.in_flight.end()) {
            if (seq < c.next_seq) {
                ++report_.late;  // its wait had run out; counted as lost already
                continue;
            }
            return fail(i, "a datagram that was never sent");
        }
        std::string want;
        append_message(want, static_cast<std::uint32_t>(i), seq, size_, true);
        if (std::memcmp(buffer_.data(), want.data(), size_) != 0) {
            return fail(i, "message " + std::to_string(seq) + " came back changed");
        }
        const Pending p = *it;
        c.in_flight.erase(it);
        --in_flight_;
        reply_done(i, p);
    }
}

void LoadGen::on_event(std::size_t i, std::uint32_t events) {
    Conn& c = conns_[i];
    if (c.state == Conn::State::kConnecting) return on_connected(i);
    if (c.state != Conn::State::kOpen) return;
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) opt_.udp ? read_datagrams(i) : read_stream(i);
    if (c.state == Conn::State::kOpen && (events & EPOLLOUT)) flush(i);
}

// UDP: a datagram unanswered after --timeout is lost; the loop sends a fresh one so the
// load stays closed. TCP loses nothing, so there a late reply means a stuck server.
void LoadGen::scan_timeouts() {
    const std::int64_t now = now_ns();
    const auto limit = static_cast<std::int64_t>(opt_.timeout * 1e9);
    if (now - last_scan_ < kScanEveryNs) return;
    last_scan_ = now;
    for (std::size_t i = 0; i < conns_.size(); ++i) {
        Conn& c = conns_[i];
        if (c.state == Conn::State::kConnecting && now - c.started_ns > limit) {
            fail(i, "no connection within the timeout");
            continue;
        }
        if (c.state != Conn::State::kOpen || c.in_flight.empty()) continue;
        if (now - c.in_flight.front().sent_ns <= limit) continue;
        if (!opt_.udp || !c.joined) {
            fail(i, "no reply within the timeout");
            continue;
        }
        std::erase_if(c.in_flight, [&](const Pending& p) {
            if (now - p.sent_ns <= limit) return false;
            ++report_.lost;
            --in_flight_;
            return true;
        });
        if (phase_ == Phase::kWarmup || phase_ == Phase::kWindow) {
            send_messages(i, opt_.depth - static_cast<long long>(c.in_flight.size()));
        }
    }
}

// After the measurement, every TCP connection is closed with an RST (SO_LINGER 0) rather
// than a FIN: a normal close would leave each of our ports in TIME_WAIT for a minute, and
// 19,000 of those make the next run's connect() search a crowded port space.
void LoadGen::abort_all() {
    const linger abort{1, 0};
    for (auto& c : conns_) {
        if (c.fd && !opt_.udp) setsockopt(c.fd.get(), SOL_SOCKET, SO_LINGER, &abort, sizeof abort);
        c.fd.reset();
    }
}

// The event loop: runs until `deadline`, or sooner, when `until_quiet`, once nothing is
// joining and nothing is in flight. In the join phase it also starts new connections.
void LoadGen::run_until(std::int64_t deadline, bool until_quiet) {
    std::vector<epoll_event> events(kMaxEvents);
    while (!lab::stop_requested()) {
        while (phase_ == Phase::kJoin && started_ < conns_.size() &&
               joining_ < opt_.connect_batch) {
            start_connect(started_);
        }
        const bool joining_done = phase_ != Phase::kJoin || started_ == conns_.size();
        if (until_quiet && joining_done && joining_ == 0 && in_flight_ == 0) return;
        const std::int64_t now = now_ns();
        if (now >= deadline) return;
        const int wait_ms =
            static_cast<int>(std::min<std::int64_t>((deadline - now) / 1'000'000 + 1, 50));
        const int n = epoll_wait(epoll_.get(), events.data(), kMaxEvents, wait_ms);
        if (n == -1 && errno != EINTR) lab::die("epoll_wait");
        for (int k = 0; k < n; ++k) {
            on_event(static_cast<std::size_t>(events[static_cast<std::size_t>(k)].data.u64),
                     events[static_cast<std::size_t>(k)].events);
        }
        scan_timeouts();
    }
}

void LoadGen::join_all() {
    const std::int64_t began = now_ns();
    // A generous bound: every connection gets --timeout on its own (scan_timeouts).
    const std::int64_t deadline =
        began + static_cast<std::int64_t>((opt_.timeout + 1) * 1e9) *
                    (1 + opt_.connections / std::max(1LL, opt_.connect_batch));
    phase_ = Phase::kJoin;
    run_until(deadline, true);
    report_.join_total_s = static_cast<double>(now_ns() - began) / 1e9;
}

Report LoadGen::run() {
    const int pid = static_cast<int>(opt_.server_pid);
    report_.before = sample_server(pid, opt_.idle);
    join_all();
    if (report_.joined == 0) {
        // Nothing to measure: every connection failed (the first error says why).
    } else if (opt_.idle) {
        report_.after = sample_server(pid, true);
        // Every connection echoes once more: a connection held is one still served.
        phase_ = Phase::kIdleCheck;
        for (std::size_t i = 0; i < conns_.size(); ++i)
            send_messages(i, 1);
        run_until(now_ns() + static_cast<std::int64_t>(opt_.timeout * 1e9), true);
        report_.held = std::count_if(conns_.begin(), conns_.end(), [](const Conn& c) {
            return c.state == Conn::State::kOpen && c.in_flight.empty();
        });
        report_.unfinished = in_flight_;
    } else {
        phase_ = Phase::kWarmup;
        // The busy connections come first; the rest stay quiet after joining.
        const auto busy = static_cast<std::size_t>(opt_.connections);
        for (std::size_t i = 0; i < busy; ++i)
            send_messages(i, opt_.depth);
        run_until(now_ns() + static_cast<std::int64_t>(opt_.warmup * 1e9));
        report_.window_start = sample_server(pid, false);
        const double client_cpu = process_cpu_seconds();
        const std::int64_t began = now_ns();
        phase_ = Phase::kWindow;
        run_until(began + static_cast<std::int64_t>(opt_.duration * 1e9));
        report_.window_s = static_cast<double>(now_ns() - began) / 1e9;
        report_.client_cpu_s = process_cpu_seconds() - client_cpu;
        report_.window_end = sample_server(pid, true);
        phase_ = Phase::kDrain;
        run_until(now_ns() + static_cast<std::int64_t>(opt_.timeout * 1e9), true);
        report_.unfinished = in_flight_;
    }
    abort_all();
    return std::move(report_);
}

// ------------------------------------------------------------------------------ output

std::string json_string(std::string_view text) {
    std::string out = "\"";
    for (const char ch : text) {
        if (ch == '"' || ch == '\\') out += '\\';
        if (static_cast<unsigned char>(ch) < 0x20) {
            out += ' ';
            continue;
        }
        out += ch;
    }
    return out + "\"";
}

// Every figure as a (name, value) pair, printed either as text or as one JSON object.
std::vector<std::pair<std::string, std::string>> figures(const Options& o, const Report& r) {
    std::vector<std::pair<std::string, std::string>> f;
    const auto num = [](double v) {
        char text[64];
        std::snprintf(text, sizeof text, "%.6g", v);
        return std::string(text);
    };
    const auto add = [&](const char* name, double v) { f.emplace_back(name, num(v)); };
    f.emplace_back("mode", json_string(o.idle ? "idle" : "load"));
    f.emplace_back("proto", json_string(o.udp ? "udp" : "tcp"));
    add("connections", static_cast<double>(o.connections));
    add("idle_connections", static_cast<double>(o.idle_connections));
    add("depth", static_cast<double>(o.depth));
    add("size", static_cast<double>(o.size));
    add("joined", static_cast<double>(r.joined));
    add("join_total_s", r.join_total_s);
    add("connect_p50_ms", r.connect.percentile_us(0.5) / 1e3);
    add("connect_max_ms", r.connect.max_us() / 1e3);
    add("join_p50_ms", r.join.percentile_us(0.5) / 1e3);
    add("join_max_ms", r.join.max_us() / 1e3);
    add("errors", static_cast<double>(r.errors));
    add("lost", static_cast<double>(r.lost));
    add("late", static_cast<double>(r.late));
    add("unfinished", static_cast<double>(r.unfinished));
    if (o.idle) {
        const double held = static_cast<double>(std::max(r.held, 1LL));
        add("held", static_cast<double>(r.held));
        add("server_procs", r.after.processes);
        add("rss_before_kib", static_cast<double>(r.before.rss_kib));
        add("rss_after_kib", static_cast<double>(r.after.rss_kib));
        add("pss_before_kib", static_cast<double>(r.before.pss_kib));
        add("pss_after_kib", static_cast<double>(r.after.pss_kib));
        add("rss_per_conn_bytes",
            static_cast<double>(r.after.rss_kib - r.before.rss_kib) * 1024 / held);
        add("pss_per_conn_bytes",
            static_cast<double>(r.after.pss_kib - r.before.pss_kib) * 1024 / held);
    } else {
        const double cpu = r.window_end.cpu_seconds - r.window_start.cpu_seconds;
        const auto trips = static_cast<double>(r.round_trips);
        add("window_s", r.window_s);
        add("round_trips", trips);
        add("rt_per_s", r.window_s > 0 ? trips / r.window_s : 0);
        add("lat_mean_us", r.latency.mean_us());
        add("lat_p50_us", r.latency.percentile_us(0.50));
        add("lat_p90_us", r.latency.percentile_us(0.90));
        add("lat_p99_us", r.latency.percentile_us(0.99));
        add("lat_p999_us", r.latency.percentile_us(0.999));
        add("lat_max_us", r.latency.max_us());
        add("server_cpu_s", cpu);
        add("cpu_us_per_rt", trips > 0 ? cpu * 1e6 / trips : 0);
        add("client_cpu_s", r.client_cpu_s);
        add("server_procs", r.window_end.processes);
        add("server_rss_kib", static_cast<double>(r.window_end.rss_kib));
        add("server_pss_kib", static_cast<double>(r.window_end.pss_kib));
    }
    f.emplace_back("first_error", json_string(r.first_error));
    return f;
}

void print_report(const Options& o, const Report& r) {
    const auto f = figures(o, r);
    std::string out = o.json ? "{" : "";
    for (std::size_t i = 0; i < f.size(); ++i) {
        if (o.json) {
            out += (i ? ", " : "") + json_string(f[i].first) + ": " + f[i].second;
        } else {
            out += f[i].first + std::string(std::max<std::size_t>(2, 20 - f[i].first.size()), ' ') +
                   f[i].second + "\n";
        }
    }
    if (o.json) out += "}\n";
    std::fwrite(out.data(), 1, out.size(), stdout);
    std::fflush(stdout);
}

bool is_loopback(const lab::Endpoint& e) {
    if (e.family() == AF_INET) {
        const auto* in = reinterpret_cast<const sockaddr_in*>(e.addr());
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (e.family() == AF_INET6) {
        const auto* in6 = reinterpret_cast<const sockaddr_in6*>(e.addr());
        return IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
    }
    return false;
}

// Each connection needs a descriptor here (and one in the server): lift the soft limit
// to the hard one, which only root can raise.
void raise_fd_limit(long long wanted) {
    rlimit limit{};
    if (getrlimit(RLIMIT_NOFILE, &limit) == -1) return;
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
    if (static_cast<long long>(limit.rlim_cur) < wanted + 16) {
        lab::note("warning: the descriptor limit " + std::to_string(limit.rlim_cur) +
                  " is too low for " + std::to_string(wanted) + " connections");
    }
}

}  // namespace

int main(int argc, char** argv) {
    Options o;
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", 0, lab::Positionals::kNone);
    args.flag("--udp", &o.udp);
    args.option("--connections", &o.connections, 1, 1'000'000);
    args.option("--idle-connections", &o.idle_connections, 0, 1'000'000);
    args.option("--depth", &o.depth, 1, 4096);
    args.option("--size", &o.size, 1, 1 << 20);
    args.seconds("--duration", &o.duration);
    args.seconds("--warmup", &o.warmup);
    args.option("--server-pid", &o.server_pid, 0, 1 << 30);
    args.flag("--idle", &o.idle);
    args.option("--connect-batch", &o.connect_batch, 1, 1'000'000);
    args.seconds("--timeout", &o.timeout);
    args.flag("--json", &o.json);
    args.parse(argc, argv);
    if (!args.given("--port") || args.port() == 0) args.usage_error("--port N is required");
    if (o.udp && o.size <= static_cast<long long>(kUdpSeqDigits)) {
        args.usage_error("--udp needs --size of at least 17 (a 16-digit number and a newline)");
    }
    if (o.udp && o.size > static_cast<long long>(kReadChunk)) {
        args.usage_error("--udp allows --size up to 65536");
    }
    const lab::Endpoint server = args.endpoint(o.udp ? SOCK_DGRAM : SOCK_STREAM);
    if (!is_loopback(server)) {
        args.usage_error("only loopback addresses: this tool floods its target");
    }

    std::signal(SIGPIPE, SIG_IGN);  // a server that resets a connection must not kill the generator
    lab::handle_signals();
    raise_fd_limit(o.connections + o.idle_connections);

    LoadGen generator(o, server);
    const Report report = generator.run();
    print_report(o, report);
    if (report.joined == 0) {
        lab::fatal("no connection to " + lab::format_address(server) +
                   " got an echo: " + report.first_error);
    }
    return lab::kExitOk;
}
