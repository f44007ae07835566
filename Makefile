# LoRAKit build, test and install.
#   make build                 build liblorakit.so and the lorakit CLI (release)
#   make test                  build, then run the Swift, C, Python, ABI-sweep and plugin tests (and a short kill test)
#   make plugins               build the shipped adapter plugins into .build/plugins/ (ia3.so, dora.so)
#   make test-plugins          the plugin ABI tests (plain C reference host, no liblorakit; a few seconds);
#                              leaves the test plugins (shipped + bad ones) in .build/plugin-tests/
#   make test-kill             crash safety: SIGKILL at random moments, KILLS=50 per operation
#   make test-asan / test-tsan  the suites under AddressSanitizer+UBSan / ThreadSanitizer (scripts/sanitize.sh)
#   make fuzz TARGET=… SECONDS=…   build and run one libFuzzer target (Fuzz/README.md); make fuzz-all
#   make install PREFIX=/usr/local   install library, headers, pkg-config file and CLI
#   make bench                 run the benchmarks beside their peers and rewrite BENCHMARKS.md tables
SHELL := /bin/bash
PREFIX ?= /usr/local
PYTHON ?= python3
CC ?= cc
# One configuration serves the library, the CLI and the tests (tests use @testable import).
SWIFT_FLAGS ?= -c release -Xswiftc -enable-testing
BUILD_DIR := $(shell swift build $(SWIFT_FLAGS) --show-bin-path 2>/dev/null)
VERSION := $(shell sed -n 's/.*static let major = \([0-9]*\).*/\1/p' Sources/LoRAKitCore/Version.swift).$(shell sed -n 's/.*static let minor = \([0-9]*\).*/\1/p' Sources/LoRAKitCore/Version.swift).$(shell sed -n 's/.*static let patch = \([0-9]*\).*/\1/p' Sources/LoRAKitCore/Version.swift)
# A private install used by the C tests, so they build against the installed header and library.
TEST_PREFIX := $(CURDIR)/.build/test-prefix

# Shipped adapter plugins (examples/plugins/): IA³ in C, DoRA in Swift (its own package, only the plugin header).
PLUGIN_DIR := $(CURDIR)/.build/plugins
PLUGIN_CFLAGS := -std=c11 -Wall -Wextra -Werror -O2 -fPIC -shared -fvisibility=hidden -I$(CURDIR)/Include

.PHONY: all build test test-swift test-c test-python test-abi test-plugins plugins install uninstall bench clean model \
        test-kill test-kill-short fuzz fuzz-build fuzz-all fuzz-smoke test-asan test-asan-c test-tsan

all: build

build:
	swift build $(SWIFT_FLAGS)
	$(MAKE) --no-print-directory plugins

test: build model test-plugins test-swift test-c test-python test-abi test-kill-short

# Stale .so files are deleted first: the library searches this folder, and a leftover (e.g. a bad_*.so test
# plugin from an old checkout) once shadowed the real ia3 plugin.
plugins:
	mkdir -p $(PLUGIN_DIR)
	rm -f $(PLUGIN_DIR)/*.so
	$(CC) $(PLUGIN_CFLAGS) -o $(PLUGIN_DIR)/ia3.so examples/plugins/ia3/ia3.c -lm
	swift build -c release --package-path examples/plugins/dora
	cp "$$(swift build -c release --package-path examples/plugins/dora --show-bin-path)/liblorakit-dora.so" $(PLUGIN_DIR)/dora.so

# The test plugins (the shipped ones and the bad ones) go to their own folder, so that the shipped
# plugins' folder, which the library searches, holds only the shipped plugins. The C, Python and Swift
# tests read them from there.
PLUGIN_TEST_DIR := $(CURDIR)/.build/plugin-tests
test-plugins: plugins
	mkdir -p $(PLUGIN_TEST_DIR)
	cp $(PLUGIN_DIR)/ia3.so $(PLUGIN_DIR)/dora.so $(PLUGIN_TEST_DIR)/
	bash Tests/plugins/run.sh $(PLUGIN_TEST_DIR)

test-swift: test-plugins
	LORAKIT_MODEL=$$(cat .build/model-path 2>/dev/null) swift test $(SWIFT_FLAGS)

test-c: build test-plugins
	$(MAKE) --no-print-directory install PREFIX=$(TEST_PREFIX)
	LORAKIT_MODEL=$$(cat .build/model-path 2>/dev/null) bash Tests/c/run.sh $(TEST_PREFIX)

# Every lk_* function through libffi with hostile arguments, one at a time, each call in a forked child
# (Tests/abi/abi_sweep.c; the signature table is generated from the installed header by scripts/abi_table.py).
test-abi: build
	$(MAKE) --no-print-directory install PREFIX=$(TEST_PREFIX)
	bash Tests/abi/run.sh $(TEST_PREFIX)

test-python: build test-plugins
	LORAKIT_MODEL=$$(cat .build/model-path 2>/dev/null) LORAKIT_LIBRARY=$(BUILD_DIR)/liblorakit.so LORAKIT_CLI=$(BUILD_DIR)/lorakit-cli $(PYTHON) -m pytest -q bindings/python/tests

install: build
	install -d $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/bin
	install -m 0755 $(BUILD_DIR)/liblorakit.so $(DESTDIR)$(PREFIX)/lib/liblorakit.so
	# The Swift runtime libraries liblorakit.so needs, found through its rpath $$ORIGIN/lorakit-swift.
	install -d $(DESTDIR)$(PREFIX)/lib/lorakit-swift
	for f in $$(ldd $(BUILD_DIR)/liblorakit.so | awk '/libswift|libdispatch|libBlocksRuntime|libFoundation/ {print $$3}'); do \
	    install -m 0644 "$$f" $(DESTDIR)$(PREFIX)/lib/lorakit-swift/; done
	install -m 0644 Include/lorakit.h $(DESTDIR)$(PREFIX)/include/lorakit.h
	install -m 0644 Include/lorakit_plugin.h $(DESTDIR)$(PREFIX)/include/lorakit_plugin.h
	# The shipped adapter plugins, in the folder the library searches (<prefix>/lib/lorakit/plugins).
	install -d $(DESTDIR)$(PREFIX)/lib/lorakit/plugins
	install -m 0755 $(PLUGIN_DIR)/ia3.so $(PLUGIN_DIR)/dora.so $(DESTDIR)$(PREFIX)/lib/lorakit/plugins/
	install -m 0755 $(BUILD_DIR)/lorakit-cli $(DESTDIR)$(PREFIX)/bin/lorakit
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' bindings/c/lorakit.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/lorakit.pc

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/lib/liblorakit.so $(DESTDIR)$(PREFIX)/include/lorakit.h $(DESTDIR)$(PREFIX)/include/lorakit_plugin.h \
	      $(DESTDIR)$(PREFIX)/lib/pkgconfig/lorakit.pc $(DESTDIR)$(PREFIX)/bin/lorakit
	rm -rf $(DESTDIR)$(PREFIX)/lib/lorakit-swift $(DESTDIR)$(PREFIX)/lib/lorakit

bench: build
	$(PYTHON) bench/run_benchmarks.py --cli $(BUILD_DIR)/lorakit-cli

# Fetch and cache the real model (SmolLM2-135M-Instruct Q4_1). Tests that need it read LORAKIT_MODEL;
# if the download fails they are skipped loudly.
model:
	@scripts/fetch_model.sh > .build/model-path 2>.build/model-error || { echo "WARNING: model download failed: $$(cat .build/model-error); model tests will be SKIPPED" >&2; : > .build/model-path; }
	@echo "model: $$(cat .build/model-path)"

# Crash safety (Tests/kill/kill_test.py): train, adapter save, merge and convert are killed with SIGKILL at
# random moments, KILLS times each; every result on disk must stay complete and --resume exact.
KILLS ?= 50
test-kill: build
	LORAKIT_CLI=$(BUILD_DIR)/lorakit-cli nice -n 19 $(PYTHON) Tests/kill/kill_test.py --kills $(KILLS)
test-kill-short: build
	LORAKIT_CLI=$(BUILD_DIR)/lorakit-cli $(PYTHON) Tests/kill/kill_test.py --kills 3

# Sanitizers (scripts/sanitize.sh): each builds into its own scratch folder (.build-asan, .build-tsan) and
# prints one line per suite: result, sanitizer reports, seconds. Run by hand; not part of make test.
test-asan: model
	nice -n 19 bash scripts/sanitize.sh address swift c abi plugins python
# The C suite and the ABI sweep only (what CI can afford).
test-asan-c: model
	nice -n 19 bash scripts/sanitize.sh address c abi
test-tsan: model
	nice -n 19 bash scripts/sanitize.sh thread swift c plugins python

# Fuzzing (Fuzz/README.md): libFuzzer + AddressSanitizer builds in .build-fuzz, kept out of build and test.
FUZZ_TARGETS := gguf-model gguf-lora safetensors hf-config peft jsonl tokenizer tokenizer-json templates
SECONDS ?= 60
FUZZ_SECONDS ?= 30
fuzz-build:
	nice -n 19 bash Fuzz/build.sh $(TARGET)
fuzz: model
	@[ -n "$(TARGET)" ] || { echo "usage: make fuzz TARGET=<one of: $(FUZZ_TARGETS)> SECONDS=60" >&2; exit 2; }
	nice -n 19 bash Fuzz/build.sh $(TARGET)
	nice -n 19 bash Fuzz/run.sh $(TARGET) $(SECONDS)
# Every target for FUZZ_SECONDS (30 s by default).
fuzz-all: model fuzz-build
	@fail=0; for t in $(FUZZ_TARGETS); do nice -n 19 bash Fuzz/run.sh $$t $(FUZZ_SECONDS) || fail=1; done; exit $$fail
# The committed seeds and crash reproducers, each run once through every target.
fuzz-smoke: model fuzz-build
	@fail=0; for t in $(FUZZ_TARGETS); do bash Fuzz/run.sh $$t replay || fail=1; done; exit $$fail

clean:
	rm -rf .build .build-fuzz .build-asan .build-tsan
