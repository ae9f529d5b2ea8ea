# qcowkit - one GNU Makefile for the library, the CLI, the tests and the benchmarks.
#   make                 static + shared library and the qcowkit CLI (in build/)
#   make check           unit, CLI, corrupt and interop tests (installs test peers when root)
#   make check SANITIZE=1  the same under AddressSanitizer + UndefinedBehaviorSanitizer
#   make demo            build, then run the main job on an image it makes itself
#   make bench           benchmarks against qemu-img
#   make install PREFIX=/usr/local

PREFIX ?= /usr/local
CC ?= cc
VERSION := 0.1.0
SOMAJOR := 0

ifeq ($(SANITIZE),1)
B := build-san
SANFLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
OPT := -O1 -g
else
B := build
SANFLAGS :=
OPT := -O2 -g
endif

HAVE_ZSTD := $(shell pkg-config --exists libzstd 2>/dev/null && echo 1)
ifeq ($(HAVE_ZSTD),1)
CODEC_CFLAGS := -DQK_HAVE_ZSTD $(shell pkg-config --cflags libzstd)
CODEC_LIBS := $(shell pkg-config --libs libzstd)
else
$(info qcowkit: libzstd not found; building without zstd support (apt-get install libzstd-dev))
endif

HAVE_LIBDEFLATE := $(shell pkg-config --exists libdeflate 2>/dev/null && echo 1)
ifeq ($(HAVE_LIBDEFLATE),1)
CODEC_CFLAGS += -DQK_HAVE_LIBDEFLATE $(shell pkg-config --cflags libdeflate)
CODEC_LIBS += $(shell pkg-config --libs libdeflate)
endif

# ISA-L's igzip: fast deflate for compressed writes (zlib otherwise).
HAVE_ISAL := $(shell pkg-config --exists libisal 2>/dev/null && echo 1)
ifeq ($(HAVE_ISAL),1)
CODEC_CFLAGS += -DQK_HAVE_ISAL $(shell pkg-config --cflags libisal)
CODEC_LIBS += $(shell pkg-config --libs libisal)
else
$(info qcowkit: libisal not found; compressed writes deflate with zlib, slower (apt-get install libisal-dev))
endif

# bats runs files in parallel only with GNU parallel installed.
BATS_JOBS := $(shell command -v parallel >/dev/null 2>&1 && echo --jobs 2)

WARN := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wvla
BASECFLAGS := -std=c11 -D_GNU_SOURCE $(OPT) $(WARN) $(SANFLAGS) -Iinclude
LIBCFLAGS := $(BASECFLAGS) -fPIC -fvisibility=hidden -DQK_BUILDING_LIBRARY $(CODEC_CFLAGS)
LIBS := -lz $(CODEC_LIBS) -lpthread
LDFLAGS_ALL := $(SANFLAGS)

LIB_SRC := $(wildcard src/*.c)
LIB_OBJ := $(patsubst src/%.c,$(B)/src/%.o,$(LIB_SRC))
CLI_SRC := $(wildcard cli/*.c)
CLI_OBJ := $(patsubst cli/%.c,$(B)/cli/%.o,$(CLI_SRC))
UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(patsubst tests/unit/%.c,$(B)/tests/%,$(UNIT_SRC))

STATIC := $(B)/libqcowkit.a
SHARED := $(B)/libqcowkit.so.$(VERSION)
CLI := $(B)/qcowkit

all: $(STATIC) $(SHARED) $(CLI)

$(B)/src/%.o: src/%.c $(wildcard src/*.h) include/qcowkit.h
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	@$(CC) $(LIBCFLAGS) -c -o $@ $<

$(B)/cli/%.o: cli/%.c $(wildcard cli/*.h) include/qcowkit.h
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	@$(CC) $(BASECFLAGS) -c -o $@ $<

$(STATIC): $(LIB_OBJ)
	@rm -f $@
	@echo "  AR      $@"
	@ar rcs $@ $^

$(SHARED): $(LIB_OBJ) src/libqcowkit.map
	@echo "  LD      $@"
	@$(CC) -shared -Wl,-soname,libqcowkit.so.$(SOMAJOR) -Wl,--version-script=src/libqcowkit.map \
	    $(LDFLAGS_ALL) -o $@ $(LIB_OBJ) $(LIBS)
	ln -sf libqcowkit.so.$(VERSION) $(B)/libqcowkit.so.$(SOMAJOR)
	ln -sf libqcowkit.so.$(SOMAJOR) $(B)/libqcowkit.so

$(CLI): $(CLI_OBJ) $(STATIC)
	@echo "  LD      $@"
	@$(CC) $(LDFLAGS_ALL) -o $@ $(CLI_OBJ) $(STATIC) $(LIBS) -lm

# Made at install time, so that it names the PREFIX installed to.
$(B)/qcowkit.pc: qcowkit.pc.in FORCE
	@mkdir -p $(B)
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' -e 's|@LIBS@|$(LIBS)|' $< > $@

FORCE:

# Unit tests link the library's objects directly so they can reach src/
# internals, plus the shared helpers of tests/unit (files not named test_*).
UNIT_HELPERS := $(filter-out tests/unit/test_%.c,$(wildcard tests/unit/*.c))
$(B)/tests/%: tests/unit/%.c $(UNIT_HELPERS) $(LIB_OBJ) $(wildcard tests/unit/*.h)
	@mkdir -p $(dir $@)
	@echo "  LD      $@"
	@$(CC) $(BASECFLAGS) $(CODEC_CFLAGS) -Isrc -o $@ $< $(UNIT_HELPERS) $(LIB_OBJ) $(LIBS) -lcmocka

# Fuzz regressions: each target replays the inputs that once broke it.
REPLAY_BIN := $(patsubst tests/fuzz/%.c,$(B)/tests/replay-%,$(wildcard tests/fuzz/fuzz_*.c))
$(B)/tests/replay-%: tests/fuzz/%.c tests/fuzz/replay.c $(LIB_OBJ)
	@mkdir -p $(dir $@)
	@echo "  LD      $@"
	@$(CC) $(BASECFLAGS) -Wno-missing-prototypes $(CODEC_CFLAGS) -Isrc -o $@ $< tests/fuzz/replay.c $(LIB_OBJ) $(LIBS)
RUN_REPLAYS = for t in $(REPLAY_BIN); do n=$$(basename $$t | sed 's/^replay-//'); \
	    ls tests/fuzz/regress/$$n/*.hex >/dev/null 2>&1 || continue; $$t tests/fuzz/regress/$$n/*.hex || fail=1; done

# Every unit binary runs; the target fails at the end if any failed.
RUN_UNITS = fail=0; for t in $(UNIT_BIN); do echo "== $$t"; $$t || fail=1; done; $(RUN_REPLAYS); exit $$fail

unit: $(UNIT_BIN) $(REPLAY_BIN)
	@$(RUN_UNITS)

peers:
	@bash tests/install-peers.sh

# The peers are installed first, then a fresh make sees the libraries they
# brought (zstd, libdeflate, cmocka). Each bats suite gets the CLI under
# test through QCOWKIT.
check: peers
	@$(MAKE) --no-print-directory check-run

check-run: all $(UNIT_BIN) $(REPLAY_BIN)
	@unit_rc=0; ($(RUN_UNITS)) || unit_rc=1; \
	QCOWKIT=$(abspath $(CLI)) QK_SANITIZED=$(filter 1,$(SANITIZE)) \
	    bats $(BATS_JOBS) tests/cli tests/corrupt tests/interop || unit_rc=1; \
	exit $$unit_rc

demo: all
	@QCOWKIT=$(abspath $(CLI)) sh tools/demo.sh

bench: all
	@QCOWKIT=$(abspath $(CLI)) bash bench/run.sh

# libFuzzer targets (clang, ASan, UBSan), built from the library sources.
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN := $(patsubst tests/fuzz/%.c,build-fuzz/%,$(FUZZ_SRC))
SECONDS ?= 60
build-fuzz/%: tests/fuzz/%.c $(LIB_SRC) $(wildcard src/*.h) include/qcowkit.h
	@mkdir -p build-fuzz
	clang -g -O1 -std=c11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
	    $(CODEC_CFLAGS) -Iinclude -Isrc -o $@ $< $(LIB_SRC) $(LIBS)

fuzz: $(FUZZ_BIN)

# Runs every target for SECONDS on seeds made by tests/fuzz/make-seeds.sh
# plus what earlier runs found (build-fuzz/corpus-*).
fuzz-run: fuzz
	@bash tests/fuzz/make-seeds.sh build-fuzz/seeds >/dev/null
	@set -e; for f in $(FUZZ_BIN); do n=$$(basename $$f); mkdir -p build-fuzz/corpus-$$n; \
	    echo "== $$n for $(SECONDS) s"; \
	    $$f -max_total_time=$(SECONDS) -max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
	        build-fuzz/corpus-$$n build-fuzz/seeds 2>&1 | grep -E 'stat::|ERROR|SUMMARY|Done' ; done

install: all $(B)/qcowkit.pc
	install -d $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/bin \
	    $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/man/man3
	install -m 644 $(STATIC) $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(SHARED) $(DESTDIR)$(PREFIX)/lib/
	ln -sf libqcowkit.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libqcowkit.so.$(SOMAJOR)
	ln -sf libqcowkit.so.$(SOMAJOR) $(DESTDIR)$(PREFIX)/lib/libqcowkit.so
	install -m 644 include/qcowkit.h $(DESTDIR)$(PREFIX)/include/
	install -m 644 $(B)/qcowkit.pc $(DESTDIR)$(PREFIX)/lib/pkgconfig/
	install -m 755 $(CLI) $(DESTDIR)$(PREFIX)/bin/
	install -m 644 docs/qcowkit.1 $(DESTDIR)$(PREFIX)/share/man/man1/
	install -m 644 docs/qcowkit.3 $(DESTDIR)$(PREFIX)/share/man/man3/

clean:
	rm -rf build build-san build-fuzz


.PHONY: FORCE all unit peers check check-run demo bench fuzz fuzz-run install clean
