# LoRAKit build, test and install.
#   make demo                  set-up, build, model, then fine-tune a LoRA adapter and show before/after
#   make build                 build liblorakit.so and the lorakit CLI (release)
#   make test                  build, then run the Swift, C, Python, ABI-sweep and plugin tests and the examples
#   make examples              build and run every example briefly (C, Python, packaging, Swift, demo)
#   make wheel                 a Python wheel with liblorakit.so, the CLI and the Swift runtime inside
#   make plugins               build the shipped adapter plugins into .build/plugins/ (ia3.so, dora.so)
#   make test-plugins          the plugin ABI tests (plain C reference host, no liblorakit; a few seconds)
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
# The examples build against their own install, as a user's program would.
EXAMPLES_PREFIX := $(CURDIR)/.build/examples-prefix

# Shipped adapter plugins (examples/plugins/): IA³ in C, DoRA in Swift (its own package, only the plugin header).
PLUGIN_DIR := $(CURDIR)/.build/plugins
PLUGIN_CFLAGS := -std=c11 -Wall -Wextra -Werror -O2 -fPIC -shared -fvisibility=hidden -I$(CURDIR)/Include

.PHONY: all build test test-swift test-c test-python test-abi test-plugins plugins install uninstall bench clean model demo examples wheel

all: build

build:
	swift build $(SWIFT_FLAGS)
	$(MAKE) --no-print-directory plugins

test: build model test-swift test-c test-python test-abi test-plugins examples

plugins:
	mkdir -p $(PLUGIN_DIR)
	$(CC) $(PLUGIN_CFLAGS) -o $(PLUGIN_DIR)/ia3.so examples/plugins/ia3/ia3.c -lm
	swift build -c release --package-path examples/plugins/dora
	cp "$$(swift build -c release --package-path examples/plugins/dora --show-bin-path)/liblorakit-dora.so" $(PLUGIN_DIR)/dora.so

test-plugins: plugins
	bash Tests/plugins/run.sh $(PLUGIN_DIR)

# The main job in one command: what is missing is installed, the library built, the model fetched
# (cached), then a LoRA adapter is fine-tuned on examples/demo/data and the before/after shown.
demo:
	bash scripts/setup.sh
	$(MAKE) --no-print-directory build model
	@test -s .build/model-path || { echo "demo: the model could not be fetched (see above)" >&2; exit 1; }
	LORAKIT_LIBRARY=$(BUILD_DIR)/liblorakit.so $(PYTHON) examples/demo/demo.py \
	    --cli $(BUILD_DIR)/lorakit-cli --model "$$(cat .build/model-path)" --out demo-run

examples: build model
	$(MAKE) --no-print-directory install PREFIX=$(EXAMPLES_PREFIX)
	bash examples/run.sh $(EXAMPLES_PREFIX) $(BUILD_DIR) "$$(cat .build/model-path 2>/dev/null)"

wheel: build
	$(PYTHON) -m pip wheel --no-deps -w dist bindings/python
	@ls dist/lorakit-*.whl

test-swift:
	LORAKIT_MODEL=$$(cat .build/model-path 2>/dev/null) swift test $(SWIFT_FLAGS)

test-c: build
	$(MAKE) --no-print-directory install PREFIX=$(TEST_PREFIX)
	LORAKIT_MODEL=$$(cat .build/model-path 2>/dev/null) bash Tests/c/run.sh $(TEST_PREFIX)

# Every lk_* function through libffi with hostile arguments, one at a time, each call in a forked child
# (Tests/abi/abi_sweep.c; the signature table is generated from the installed header by scripts/abi_table.py).
test-abi: build
	$(MAKE) --no-print-directory install PREFIX=$(TEST_PREFIX)
	bash Tests/abi/run.sh $(TEST_PREFIX)

test-python: build
	LORAKIT_MODEL=$$(cat .build/model-path 2>/dev/null) LORAKIT_LIBRARY=$(BUILD_DIR)/liblorakit.so LORAKIT_CLI=$(BUILD_DIR)/lorakit-cli $(PYTHON) -m pytest -q bindings/python/tests

install: build
	install -d $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/bin
	install -m 0755 $(BUILD_DIR)/liblorakit.so $(DESTDIR)$(PREFIX)/lib/liblorakit.so
	# The Swift runtime libraries liblorakit.so and the CLI need, found through their rpaths
	# ($$ORIGIN/lorakit-swift, $$ORIGIN/../lib/lorakit-swift): no Swift toolchain is needed to run them.
	install -d $(DESTDIR)$(PREFIX)/lib/lorakit-swift
	for f in $$(ldd $(BUILD_DIR)/liblorakit.so $(BUILD_DIR)/lorakit-cli | awk '/libswift|libdispatch|libBlocksRuntime|libFoundation/ {print $$3}' | sort -u); do \
	    install -m 0644 "$$f" $(DESTDIR)$(PREFIX)/lib/lorakit-swift/; done
	install -m 0644 Include/lorakit.h $(DESTDIR)$(PREFIX)/include/lorakit.h
	install -m 0644 Include/lorakit_plugin.h $(DESTDIR)$(PREFIX)/include/lorakit_plugin.h
	install -m 0755 $(BUILD_DIR)/lorakit-cli $(DESTDIR)$(PREFIX)/bin/lorakit
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' bindings/c/lorakit.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/lorakit.pc

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/lib/liblorakit.so $(DESTDIR)$(PREFIX)/include/lorakit.h $(DESTDIR)$(PREFIX)/include/lorakit_plugin.h \
	      $(DESTDIR)$(PREFIX)/lib/pkgconfig/lorakit.pc $(DESTDIR)$(PREFIX)/bin/lorakit
	rm -rf $(DESTDIR)$(PREFIX)/lib/lorakit-swift

bench: build
	$(PYTHON) bench/run_benchmarks.py --cli $(BUILD_DIR)/lorakit-cli

# Fetch and cache the real model (SmolLM2-135M-Instruct Q4_1). Tests that need it read LORAKIT_MODEL;
# if the download fails they are skipped loudly.
model:
	@scripts/fetch_model.sh > .build/model-path 2>.build/model-error || { echo "WARNING: model download failed: $$(cat .build/model-error); model tests will be SKIPPED" >&2; : > .build/model-path; }
	@echo "model: $$(cat .build/model-path)"

clean:
	rm -rf .build
