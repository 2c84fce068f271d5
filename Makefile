# The lab suite's one entry point. `make help` lists the targets.
#
# Every folder labs/NN-name/ with server.cpp and client.cpp is a lab: it builds into
# $(BUILD)/NN-name/server and $(BUILD)/NN-name/client, linked with common/.

SHELL    := /bin/bash
CXX      ?= g++
PYTHON   ?= /usr/bin/python3
BUILD    ?= build
SAN      ?=
WERROR   ?=
LAB      ?=
PYTEST_ARGS ?=

# OPT is the optimisation (make OPT=-O0 for a quicker build); CXXFLAGS given on the
# command line are added to the flags below, not put in their place.
OPT      ?= -O2 -g
override CXXFLAGS += $(OPT) -std=c++20 -Wall -Wextra -Wpedantic -Wshadow -Wconversion -pthread
override CPPFLAGS += -I. -MMD -MP
override LDFLAGS  += -pthread
ifeq ($(WERROR),1)
override CXXFLAGS += -Werror
endif
ifeq ($(SAN),address)
override CXXFLAGS += -O1 -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
override LDFLAGS  += -fsanitize=address,undefined
endif
ifeq ($(SAN),thread)
override CXXFLAGS += -O1 -fsanitize=thread -fno-omit-frame-pointer
override LDFLAGS  += -fsanitize=thread
endif

LAB_DIRS   := $(sort $(patsubst labs/%/,%,$(dir $(wildcard labs/[0-9][0-9]-*/server.cpp))))
PROGRAMS   := $(foreach lab,$(LAB_DIRS),$(BUILD)/$(lab)/server $(BUILD)/$(lab)/client)
COMMON_SRC := $(wildcard common/*.cpp)
COMMON_OBJ := $(COMMON_SRC:%.cpp=$(BUILD)/obj/%.o)
COMMON_LIB := $(BUILD)/obj/libcommon.a
UNIT_SRC   := $(wildcard tests/unit/*.cpp)
UNIT_OBJ   := $(UNIT_SRC:%.cpp=$(BUILD)/obj/%.o)
UNIT_BIN   := $(BUILD)/tests/unit_tests
# Programs that are not a lab's (tools/NAME.cpp -> $(BUILD)/tools/NAME): the impairment relay.
TOOL_SRC   := $(wildcard tools/*.cpp)
TOOLS      := $(TOOL_SRC:tools/%.cpp=$(BUILD)/tools/%)

# `make test LAB=7` and `make test LAB=07` both mean lab 07; a lab that does not exist is
# an error, never a silent run of nothing.
LAB_NUM    := $(if $(filter 1 2 3 4 5 6 7 8 9,$(LAB)),0$(LAB),$(LAB))
ifneq ($(LAB_NUM),)
ifeq ($(filter $(LAB_NUM)-%,$(LAB_DIRS)),)
$(error no lab '$(LAB)': the labs are $(foreach d,$(LAB_DIRS),$(firstword $(subst -, ,$(d)))))
endif
endif
# Every handout traced again (make test-trace) is too slow for make test. The tests spend
# most of their time waiting (for timeouts, for programs to stop), so they run in
# E2E_WORKERS processes at once (pytest-xdist), more than there are cores.
E2E_WORKERS ?= 4
E2E_SELECT := -m "not handout_trace$(if $(LAB_NUM), and lab$(LAB_NUM))" \
              $(if $(filter-out 0 1,$(E2E_WORKERS)),-n $(E2E_WORKERS))
# fault_summary (tests/e2e) prints the fault sweep's summary; a plugin given with -p, as the
# tests run in pytest-xdist's workers and a conftest's hooks would not reach the summary.
PYTEST     := PYTHONPATH=tests/e2e $(PYTHON) -m pytest -p no:cacheprovider -p fault_summary
SAN_ENV    := ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=86 \
              UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:exitcode=86 \
              TSAN_OPTIONS=halt_on_error=1:exitcode=86:second_deadlock_stack=1

.PHONY: all test unit e2e sanitize tsan tour deps clean help format lint fuzz valgrind bench student-kit test-grader test-trace gradescope tools trace
.DEFAULT_GOAL := all
.SECONDARY:

LOADGEN    := $(BUILD)/bench/loadgen

all: $(PROGRAMS) $(TOOLS) $(UNIT_BIN) $(LOADGEN)

$(BUILD)/obj/%.o: %.cpp
	@mkdir -p $(@D)
	$(CXX) $(CPPFLAGS) $(CXXFLAGS) -c $< -o $@

$(COMMON_LIB): $(COMMON_OBJ)
	@mkdir -p $(@D)
	$(AR) rcs $@ $^

$(BUILD)/%/server: $(BUILD)/obj/labs/%/server.o $(COMMON_LIB)
	@mkdir -p $(@D)
	$(CXX) $(LDFLAGS) $^ -o $@

$(BUILD)/%/client: $(BUILD)/obj/labs/%/client.o $(COMMON_LIB)
	@mkdir -p $(@D)
	$(CXX) $(LDFLAGS) $^ -o $@

$(BUILD)/tools/%: $(BUILD)/obj/tools/%.o $(COMMON_LIB)
	@mkdir -p $(@D)
	$(CXX) $(LDFLAGS) $^ -o $@

# The load generator of make bench (tests/load/); its tests run with the others.
$(LOADGEN): $(BUILD)/obj/tests/load/loadgen.o $(COMMON_LIB)
	@mkdir -p $(@D)
	$(CXX) $(LDFLAGS) $^ -o $@

$(UNIT_BIN): $(UNIT_OBJ) $(COMMON_LIB)
	@mkdir -p $(@D)
	$(CXX) $(LDFLAGS) $^ -lgtest_main -lgtest -o $@

deps:
	@scripts/install-deps

# Builds in parallel on every core, after install-deps has made sure a compiler is there.
NPROC      := $(shell nproc 2>/dev/null || echo 2)
BUILD_ALL   = $(MAKE) --no-print-directory -j$(NPROC) all

test: deps
	$(BUILD_ALL)
ifeq ($(LAB_NUM),)
	$(MAKE) --no-print-directory unit
endif
	$(MAKE) --no-print-directory e2e

unit: $(UNIT_BIN)
	$(SAN_ENV) $(UNIT_BIN) --gtest_brief=1

e2e: $(PROGRAMS) $(TOOLS)
	$(SAN_ENV) LABS_BIN=$(or $(LABS_BIN),$(abspath $(BUILD))) $(PYTEST) $(E2E_SELECT) $(PYTEST_ARGS)

# make trace on every handout's session, checked to leave nothing behind (CI runs it).
test-trace: deps
	$(BUILD_ALL)
	@scripts/install-deps --trace
	$(SAN_ENV) LABS_BIN=$(abspath $(BUILD)) $(PYTEST) tests/docs/test_trace.py -m handout_trace $(PYTEST_ARGS)

# The instructors' tools: the grader and the student kit (slower: they run the suite's
# own tests again against broken and unfinished builds).
test-grader: deps
	$(BUILD_ALL)
	$(SAN_ENV) LABS_BIN=$(abspath $(BUILD)) $(PYTEST) tests/grader $(PYTEST_ARGS)

# The same tests against a separate AddressSanitizer + UndefinedBehaviorSanitizer build.
sanitize: deps
	$(MAKE) --no-print-directory BUILD=build/sanitize SAN=address test

# ThreadSanitizer for the labs that use threads (their end-to-end tests carry `threads`).
tsan: deps
	$(MAKE) --no-print-directory -j$(NPROC) BUILD=build/tsan SAN=thread all
	$(MAKE) --no-print-directory BUILD=build/tsan SAN=thread e2e PYTEST_ARGS="-m threads $(PYTEST_ARGS)"

# The concurrency models measured side by side into docs/bench/ (docs/bench/README.md).
bench: deps
	$(BUILD_ALL)
	@scripts/install-deps --bench
	$(PYTHON) scripts/bench --build $(BUILD) $(if $(filter 1,$(QUICK)),--quick)

# The suite with the students' parts taken out: one kit per lab, dist/student-kits/NN-name/
# and its tarball (a later lab's given code may show an earlier lab's solution, so each
# waits until its lab is due); LABS=01,03: one kit of those labs, dist/student-kit/.
# --baseline grades the untouched kit once.
student-kit:
ifeq ($(LABS),)
	@for lab in $(LAB_DIRS); do \
	    $(PYTHON) scripts/student-kit --labs $${lab%%-*} --out dist/student-kits/$$lab \
	        --tar --baseline || exit 1; \
	done
else
	$(PYTHON) scripts/student-kit --out dist/student-kit --tar --baseline --labs $(LABS)
endif

# The Gradescope autograder bundle: dist/gradescope-autograder.zip (LABS=01,03 likewise).
gradescope:
	$(PYTHON) scripts/gradescope/make-bundle --out dist/gradescope-autograder.zip $(if $(LABS),--labs $(LABS))

tour: deps
	$(BUILD_ALL)
	$(PYTHON) scripts/tour --bin $(BUILD)

# The handouts' sessions with their packets (tcpdump) and system calls (strace) recorded and
# drawn on one timeline, into build/trace/NN-name/ (docs/trace.md). Packets need root.
# PUBLISH=1 also copies each diagram beside its handout, as labs/NN-name/trace.svg.
trace: deps
	$(BUILD_ALL)
	@scripts/install-deps --trace
	$(PYTHON) scripts/trace --bin $(BUILD) $(if $(filter 1,$(PUBLISH)),--publish) $(LAB_NUM)

format:
	clang-format -i common/*.[ch]pp labs/*/*.[ch]pp $(wildcard tools/*.[ch]pp) tests/unit/*.cpp

clean:
	rm -rf build dist

help:
	@echo "make                 build every lab into $(BUILD)/NN-name/{server,client}"
	@echo "make test            install what is missing, build, run unit then end-to-end tests"
	@echo "make test LAB=07     one lab's end-to-end tests"
	@echo "make unit            GoogleTest for common/"
	@echo "make test-grader     tests of the grader, its sandbox, grade-class and the student kit"
	@echo "make e2e             pytest end-to-end tests (LABS_BIN=DIR to test another build)"
	@echo "make sanitize        everything again under ASan + UBSan, in build/sanitize"
	@echo "make tsan            the threaded labs under ThreadSanitizer, in build/tsan"
	@echo "make tour            run every lab once and show both sides"
	@echo "make trace LAB=03    lab 03's session as packets and system calls on one timeline"
	@echo "make test-trace      make trace on every handout, checked (CI runs it)"
	@echo "make bench           the servers measured side by side into docs/bench/ (QUICK=1: short)"
	@echo "make lint            clang-tidy and clang-format over the whole tree"
	@echo "make fuzz            libFuzzer on common/ and lab 02's relay (FUZZ_SECONDS=20 each)"
	@echo "make valgrind        every lab's tour scenario under memcheck"
	@echo "make WERROR=1        treat warnings as errors (CI does)"
	@echo "make student-kit     a kit per lab in dist/student-kits/ (LABS=01,03: one kit, dist/student-kit)"
	@echo "make gradescope      dist/gradescope-autograder.zip: the Gradescope autograder bundle"
	@echo "make clean           remove build/ and dist/"

-include $(COMMON_OBJ:.o=.d) $(UNIT_OBJ:.o=.d) $(wildcard $(BUILD)/obj/labs/*/*.d) \
         $(wildcard $(BUILD)/obj/tools/*.d) \
         $(BUILD)/obj/tests/load/loadgen.d

# ---------------------------------------------------------------- hardening tools

FUZZ_SECONDS ?= 20
FUZZERS      := $(patsubst tests/fuzz/%.cpp,%,$(wildcard tests/fuzz/fuzz_*.cpp))
FUZZ_FLAGS   := -std=c++20 -g -O1 -I. -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all

# libFuzzer (clang): every parser in common/ and lab 02's relay logic, each for
# FUZZ_SECONDS, starting from the checked-in seed corpus in tests/fuzz/corpus/NAME.
fuzz: tools $(FUZZERS:%=$(BUILD)/fuzz/%)
	@for f in $(FUZZERS); do \
	    name=$${f#fuzz_}; mkdir -p $(BUILD)/fuzz/corpus-$$name; \
	    echo "fuzz: $$f for $(FUZZ_SECONDS)s"; \
	    $(BUILD)/fuzz/$$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=0 \
	        -artifact_prefix=$(BUILD)/fuzz/$$f- $(BUILD)/fuzz/corpus-$$name tests/fuzz/corpus/$$name \
	        2>$(BUILD)/fuzz/$$f.log || { tail -40 $(BUILD)/fuzz/$$f.log; exit 1; }; \
	    grep -h '^#.*DONE' $(BUILD)/fuzz/$$f.log || tail -1 $(BUILD)/fuzz/$$f.log; \
	done

tools:
	@scripts/install-deps --tools

$(BUILD)/fuzz/fuzz_%: tests/fuzz/fuzz_%.cpp $(COMMON_SRC) $(wildcard common/*.hpp labs/02-udp-chat/*.hpp)
	@mkdir -p $(@D)
	clang++ $(FUZZ_FLAGS) $< $(COMMON_SRC) -o $@

# clang-tidy with the checked-in .clang-tidy, and clang-format, over the whole tree.
LINT_SRC := $(wildcard common/*.cpp labs/*/*.cpp tools/*.cpp tests/unit/*.cpp tests/fuzz/*.cpp \
                      tests/load/*.cpp)
lint: tools
	clang-format --dry-run -Werror $(LINT_SRC) $(wildcard common/*.hpp labs/*/*.hpp tools/*.hpp)
	@echo "clang-tidy on $(words $(LINT_SRC)) files, $(NPROC) at a time"
	@printf '%s\n' $(LINT_SRC) | xargs -n1 -P$(NPROC) sh -c \
	    'out=$$(clang-tidy --quiet "$$0" -- -std=c++20 -I. 2>&1); status=$$?; \
	     printf "%s\n" "$$out" | grep -v "warnings generated" | grep . ; exit $$status'

# Every lab's tour scenario with each program under memcheck (children followed): no
# errors, no leaks, no descriptor beyond stdin/stdout/stderr left open at exit.
valgrind: deps tools
	$(BUILD_ALL)
	$(PYTHON) scripts/tour --bin $(BUILD) --valgrind
