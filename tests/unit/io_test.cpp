#include "common/io.hpp"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <csignal>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/signals.hpp"

namespace {

using namespace std::string_literals;

struct Pair {
    lab::Fd writer;
    lab::Fd reader;
};

Pair socket_pair() {
    int fds[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
    return Pair{lab::Fd(fds[0]), lab::Fd(fds[1])};
}

std::vector<char> pattern(std::size_t size) {
    std::vector<char> data(size);
    for (std::size_t i = 0; i < size; ++i)
        data[i] = static_cast<char>((i * 131 + 7) % 251);
    return data;
}

TEST(WriteAll, CompletesShortWritesAgainstASlowReader) {
    Pair pair = socket_pair();
    const int tiny = 4096;  // the kernel rounds this up a little, still far below the data
    ASSERT_EQ(setsockopt(pair.writer.get(), SOL_SOCKET, SO_SNDBUF, &tiny, sizeof tiny), 0);
    ASSERT_EQ(setsockopt(pair.reader.get(), SOL_SOCKET, SO_RCVBUF, &tiny, sizeof tiny), 0);
    const std::vector<char> data = pattern(1 << 20);

    std::vector<char> got;
    std::thread slow_reader([&] {
        char chunk[1000];
        for (;;) {
            const ssize_t n = read(pair.reader.get(), chunk, sizeof chunk);
            if (n <= 0) break;
            got.insert(got.end(), chunk, chunk + n);
            if (got.size() % 100000 < 1000)
                std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
    });
    const bool ok = lab::write_all(pair.writer.get(), data.data(), data.size());
    pair.writer.reset();  // end of stream for the reader
    slow_reader.join();
    EXPECT_TRUE(ok);
    EXPECT_EQ(got, data);
}

TEST(WriteAll, RetriesWhenASignalInterrupts) {
    // A handler installed without SA_RESTART makes a blocked write() return EINTR (or a
    // short count); while no stop was asked for, write_all carries on either way.
    lab::handle_signals();
    Pair pair = socket_pair();
    const int tiny = 4096;
    setsockopt(pair.writer.get(), SOL_SOCKET, SO_SNDBUF, &tiny, sizeof tiny);
    const std::vector<char> data = pattern(std::size_t{256} * 1024);
    const pthread_t writer_thread = pthread_self();
    std::vector<char> got;
    std::thread reader([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));  // let the writer block
        pthread_kill(writer_thread, SIGALRM);
        char chunk[4096];
        for (;;) {
            const ssize_t n = read(pair.reader.get(), chunk, sizeof chunk);
            if (n <= 0) break;
            got.insert(got.end(), chunk, chunk + n);
        }
    });
    const bool ok = lab::write_all(pair.writer.get(), data.data(), data.size());
    pair.writer.reset();
    reader.join();
    EXPECT_TRUE(ok);
    EXPECT_EQ(got, data);
    EXPECT_FALSE(lab::stop_requested());
}

// The stop flag stays set for the rest of the process: these run in a child (EXPECT_EXIT).
TEST(Signals, AStopSignalEndsAWriteToAPeerThatNeverReads) {
    EXPECT_EXIT(
        {
            lab::handle_signals();
            Pair pair = socket_pair();
            std::thread([] {
                std::this_thread::sleep_for(std::chrono::milliseconds(50));
                kill(getpid(), SIGTERM);
            }).detach();
            const std::vector<char> data = pattern(std::size_t{16} << 20);  // never all taken
            const bool ok = lab::write_all(pair.writer.get(), data.data(), data.size());
            std::exit(
                !ok && errno == EINTR && lab::stop_signal_name() == std::string("SIGTERM") ? 0 : 1);
        },
        testing::ExitedWithCode(0), "");
}

TEST(Signals, ACallThatBlocksAfterTheStopIsInterruptedToo) {
    // The race: the signal arrives after the loop looked at the flag, before it blocks.
    EXPECT_EXIT(
        {
            lab::handle_signals();
            raise(SIGINT);  // handled now: nothing is blocked yet
            Pair pair = socket_pair();
            char byte = 0;
            const auto began = std::chrono::steady_clock::now();
            const ssize_t n = read(pair.reader.get(), &byte, 1);  // nothing will ever come
            const auto waited = std::chrono::steady_clock::now() - began;
            std::exit(n == -1 && errno == EINTR && waited < std::chrono::seconds(1) &&
                              lab::stop_signal_name() == std::string("SIGINT")
                          ? 0
                          : 1);
        },
        testing::ExitedWithCode(0), "");
}

TEST(Signals, LineReaderStopsWaitingForInput) {
    EXPECT_EXIT(
        {
            lab::handle_signals();
            int fds[2];
            if (pipe(fds) != 0) std::exit(2);
            std::thread([] {
                std::this_thread::sleep_for(std::chrono::milliseconds(50));
                kill(getpid(), SIGINT);
            }).detach();
            lab::LineReader input(fds[0]);  // the write end stays open: no end of input
            const auto line = input.read_line();
            std::exit(!line && errno == EINTR ? 0 : 1);
        },
        testing::ExitedWithCode(0), "");
}

TEST(WaitReadable, TimesOutAndSeesData) {
    Pair pair = socket_pair();
    const auto began = std::chrono::steady_clock::now();
    EXPECT_FALSE(lab::wait_readable(pair.reader.get(), 0.05));
    EXPECT_GE(std::chrono::steady_clock::now() - began, std::chrono::milliseconds(50));
    ASSERT_TRUE(lab::write_all(pair.writer.get(), "x"));
    EXPECT_TRUE(lab::wait_readable(pair.reader.get(), 5));
}

TEST(SleepUnlessStopped, SleepsThenStopsShortOnASignal) {
    const auto began = std::chrono::steady_clock::now();
    lab::sleep_unless_stopped(0.05);
    EXPECT_GE(std::chrono::steady_clock::now() - began, std::chrono::milliseconds(50));
    EXPECT_EXIT(
        {
            lab::handle_signals();
            std::thread([] {
                std::this_thread::sleep_for(std::chrono::milliseconds(50));
                kill(getpid(), SIGTERM);
            }).detach();
            const auto start = std::chrono::steady_clock::now();
            lab::sleep_unless_stopped(3600);
            std::exit(std::chrono::steady_clock::now() - start < std::chrono::seconds(5) ? 0 : 1);
        },
        testing::ExitedWithCode(0), "");
}

TEST(Seconds, SmallTimeoutsRoundUpNeverToZero) {
    const timeval tiny = lab::to_timeval(0.0000001);
    EXPECT_EQ(tiny.tv_sec, 0);
    EXPECT_EQ(tiny.tv_usec, 1);
    const timeval some = lab::to_timeval(2.5);
    EXPECT_EQ(some.tv_sec, 2);
    EXPECT_EQ(some.tv_usec, 500000);
    EXPECT_EQ(lab::to_milliseconds(0.0000001), 1);
    EXPECT_EQ(lab::to_milliseconds(1.0001), 1001);
    EXPECT_EQ(lab::to_milliseconds(1e12), INT_MAX);
    EXPECT_EQ(lab::seconds_text(2), "2s");
    EXPECT_EQ(lab::seconds_text(0.25), "0.25s");
}

TEST(WriteAll, ReportsAPeerThatHasGone) {
    signal(SIGPIPE, SIG_IGN);
    Pair pair = socket_pair();
    pair.reader.reset();
    EXPECT_FALSE(lab::write_all(pair.writer.get(), "x", 1));
    EXPECT_EQ(errno, EPIPE);
}

TEST(WriteAll, EmptyWriteSucceeds) {
    Pair pair = socket_pair();
    EXPECT_TRUE(lab::write_all(pair.writer.get(), "", 0));
}

lab::Fd pipe_with(const std::string& bytes) {
    int fds[2];
    EXPECT_EQ(pipe(fds), 0);
    EXPECT_TRUE(lab::write_all(fds[1], bytes));
    close(fds[1]);
    return lab::Fd(fds[0]);
}

TEST(LineReader, SplitsLinesAndKeepsTheLastWithoutNewline) {
    const lab::Fd in = pipe_with(std::string("one\n\nthree\0x\nlast", 17));
    lab::LineReader reader(in.get());
    std::vector<std::string> lines;
    while (auto line = reader.read_line())
        lines.push_back(*line);
    EXPECT_EQ(errno, 0);
    ASSERT_EQ(lines.size(), 4u);
    EXPECT_EQ(lines[0], "one");
    EXPECT_EQ(lines[1], "");
    EXPECT_EQ(lines[2], std::string("three\0x", 7));  // NUL bytes pass through
    EXPECT_EQ(lines[3], "last");
    EXPECT_TRUE(reader.eof());
}

TEST(LineReader, EmptyInputHasNoLines) {
    const lab::Fd in = pipe_with("");
    lab::LineReader reader(in.get());
    EXPECT_FALSE(reader.read_line().has_value());
    EXPECT_EQ(errno, 0);
}

TEST(LineReader, LongLinesSpanSeveralReads) {
    const std::string big(100000, 'a');
    const lab::Fd in = pipe_with(big.substr(0, 60000));  // a pipe holds 64 KiB
    lab::LineReader reader(in.get());
    const auto line = reader.read_line();
    ASSERT_TRUE(line.has_value());
    EXPECT_EQ(line->size(), 60000u);
}

TEST(LineReader, FillAndNextWorkStepByStep) {
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    const lab::Fd read_end(fds[0]);
    lab::Fd write_end(fds[1]);
    lab::LineReader reader(read_end.get());
    ASSERT_TRUE(lab::write_all(write_end.get(), "par"));
    EXPECT_EQ(reader.fill(), 3);
    EXPECT_FALSE(reader.next().has_value());  // no newline yet
    ASSERT_TRUE(lab::write_all(write_end.get(), "tial\nnext"));
    EXPECT_GT(reader.fill(), 0);
    EXPECT_EQ(reader.next(), "partial");
    EXPECT_FALSE(reader.next().has_value());
    write_end.reset();
    EXPECT_EQ(reader.fill(), 0);
    EXPECT_EQ(reader.next(), "next");
    EXPECT_FALSE(reader.next().has_value());
}

TEST(Output, ReadyLinePayloadAndLog) {
    testing::internal::CaptureStdout();
    lab::print_ready("udp", "127.0.0.1:40123");
    lab::print_payload(std::string("a\0b", 3));
    lab::Log(false)("from ", "127.0.0.1:5", ": ", 12, " bytes");
    lab::Log(true)("this line is quiet");
    lab::Log(false)("from ", std::string("@x\nready: tcp 6.6.6.6:66\x1b]0;t\a"), ": ", 2u,
                    " bytes");
    lab::print_ready("unix-dgram", "@evil\nready");
    EXPECT_EQ(testing::internal::GetCapturedStdout(),
              "ready: udp 127.0.0.1:40123\na\0b\nfrom 127.0.0.1:5: 12 bytes\n"
              "from @x\\nready: tcp 6.6.6.6:66\\x1b]0;t\\x07: 2 bytes\n"
              "ready: unix-dgram @evil\\nready\n"s);
}

TEST(Log, LinesFromManyThreadsNeverInterleave) {
    testing::internal::CaptureStdout();
    const lab::Log log(false);
    std::vector<std::thread> threads;
    threads.reserve(8);
    for (int t = 0; t < 8; ++t) {
        threads.emplace_back([&log, t] {
            for (int i = 0; i < 200; ++i)
                log("thread ", t, " line ", i, " ", std::string(50, 'x'));
        });
    }
    for (auto& th : threads)
        th.join();
    const std::string out = testing::internal::GetCapturedStdout();
    std::size_t lines = 0;
    std::size_t start = 0;
    while (start < out.size()) {
        const auto end = out.find('\n', start);
        ASSERT_NE(end, std::string::npos);
        const std::string line = out.substr(start, end - start);
        EXPECT_EQ(line.rfind("thread ", 0), 0u) << line;
        EXPECT_EQ(line.substr(line.size() - 50), std::string(50, 'x')) << line;
        ++lines;
        start = end + 1;
    }
    EXPECT_EQ(lines, 8u * 200u);
}

}  // namespace
