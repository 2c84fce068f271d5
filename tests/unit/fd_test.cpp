#include "common/fd.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <utility>

namespace {

bool is_open(int fd) {
    return fcntl(fd, F_GETFD) != -1;
}

int open_null() {
    return open("/dev/null", O_RDONLY | O_CLOEXEC);
}

TEST(Fd, DefaultHoldsNothing) {
    const lab::Fd fd;
    EXPECT_FALSE(fd);
    EXPECT_FALSE(static_cast<bool>(fd));
    EXPECT_EQ(fd.get(), -1);
}

TEST(Fd, ClosesWhenItGoesOutOfScope) {
    const int raw = open_null();
    ASSERT_GE(raw, 0);
    {
        const lab::Fd fd(raw);
        EXPECT_TRUE(is_open(raw));
    }
    EXPECT_FALSE(is_open(raw));
}

TEST(Fd, MoveConstructionTransfersOwnership) {
    const int raw = open_null();
    lab::Fd a(raw);
    lab::Fd b(std::move(a));
    EXPECT_EQ(a.get(), -1);  // NOLINT: checking the moved-from state
    EXPECT_EQ(b.get(), raw);
    EXPECT_TRUE(is_open(raw));
}

TEST(Fd, MoveAssignmentClosesWhatItHeldBefore) {
    const int first = open_null();
    const int second = open_null();
    lab::Fd a(first);
    lab::Fd b(second);
    a = std::move(b);
    EXPECT_FALSE(is_open(first));
    EXPECT_EQ(a.get(), second);
    EXPECT_EQ(b.get(), -1);  // NOLINT: the moved-from state
    EXPECT_TRUE(is_open(second));
}

TEST(Fd, SelfMoveAssignmentKeepsTheDescriptor) {
    const int raw = open_null();
    lab::Fd a(raw);
    lab::Fd& same = a;
    a = std::move(same);
    EXPECT_EQ(a.get(), raw);
    EXPECT_TRUE(is_open(raw));
}

TEST(Fd, ClosesExactlyOnce) {
    // After the owner closes its descriptor, the number is free; a new file may get it.
    // A second close by a stale owner would close that new file: check that it stays open.
    const int raw = open_null();
    {
        lab::Fd a(raw);
        lab::Fd b(std::move(a));
    }
    const int reused = open_null();
    EXPECT_EQ(reused, raw);  // the lowest free number comes back
    EXPECT_TRUE(is_open(reused));
    close(reused);
}

TEST(Fd, ReleaseGivesUpOwnership) {
    const int raw = open_null();
    int released = -1;
    {
        lab::Fd fd(raw);
        released = fd.release();
        EXPECT_FALSE(fd);
    }
    EXPECT_EQ(released, raw);
    EXPECT_TRUE(is_open(raw));
    close(raw);
}

TEST(Fd, ResetClosesAndTakesANewOne) {
    const int first = open_null();
    const int second = open_null();
    lab::Fd fd(first);
    fd.reset(second);
    EXPECT_FALSE(is_open(first));
    EXPECT_EQ(fd.get(), second);
    fd.reset();
    EXPECT_FALSE(is_open(second));
    EXPECT_FALSE(fd);
}

}  // namespace
