#include "common/io.hpp"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
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
    // short count); write_all must carry on either way.
    lab::install_stop_handlers();
    Pair pair = socket_pair();
    const int tiny = 4096;
    setsockopt(pair.writer.get(), SOL_SOCKET, SO_SNDBUF, &tiny, sizeof tiny);
    const std::vector<char> data = pattern(std::size_t{256} * 1024);
    const pthread_t writer_thread = pthread_self();
    std::vector<char> got;
    std::thread reader([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));  // let the writer block
        pthread_kill(writer_thread, SIGINT);
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
    EXPECT_TRUE(lab::stop_requested());
    EXPECT_EQ(lab::stop_signal(), SIGINT);
}

TEST(Signals, BlockStopSignalsReturnsTheMaskToWaitWith) {
    std::thread([] {  // a thread of its own, so the test's other threads keep their mask
        const sigset_t wait_mask = lab::block_stop_signals();
        sigset_t now;
        pthread_sigmask(SIG_SETMASK, nullptr, &now);
        EXPECT_EQ(sigismember(&now, SIGINT), 1);
        EXPECT_EQ(sigismember(&now, SIGTERM), 1);
        EXPECT_EQ(sigismember(&wait_mask, SIGINT), 0);
        EXPECT_EQ(sigismember(&wait_mask, SIGTERM), 0);
    })
        .join();
}

TEST(WriteAll, ReportsAPeerThatHasGone) {
    lab::ignore_sigpipe();
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
    EXPECT_EQ(testing::internal::GetCapturedStdout(),
              "ready: udp 127.0.0.1:40123\na\0b\nfrom 127.0.0.1:5: 12 bytes\n"s);
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
