# Packaging entry points (issue 5). Output in dist/.
#   make vendor    cargo vendor --locked vendor (needs the crates.io registry once)
#   make deb       dist/peagen-fabric_<version>_<arch>.deb   (dpkg-buildpackage)
#   make rpm       dist/peagen-fabric-<version>-1.<arch>.rpm (rpmbuild)
#   make packages  both (binaries built with `cargo auditable`: they embed
#                  their dependency list; scripts/install-supply-chain-tools.sh)
#   make sbom      dist/peagen-fabric-<version>.cdx.json (CycloneDX SBOM, issue 14)
#   make check     scripts/check-units.sh, check-promtool.sh, check-packages.sh
# The builds run offline from vendor/ with the cargo on PATH (rustup; Debian's
# rustc is too old). Set CARGO_TARGET_DIR to reuse a build directory.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
DIST    := $(CURDIR)/dist
STAGE   := $(DIST)/.build
SHELL   := /bin/sh

.PHONY: all vendor deb rpm packages sbom check clean-dist
all: packages

vendor:
	cargo vendor --locked vendor > /dev/null

# Built in place (so deb and rpm share one cargo build); dpkg-buildpackage's
# outputs are redirected from ../ into dist/.build/deb.
DEBOUT := $(STAGE)/deb
deb: vendor sbom
	rm -rf $(DEBOUT) && mkdir -p $(DEBOUT) $(DIST)
	PEAGEN_DEB_DESTDIR=$(DEBOUT) dpkg-buildpackage -b -us -uc -tc \
	  --buildinfo-option=-u$(DEBOUT) --changes-option=-u$(DEBOUT) \
	  --buildinfo-file=$(DEBOUT)/peagen-fabric_$(VERSION).buildinfo \
	  --changes-file=$(DEBOUT)/peagen-fabric_$(VERSION).changes
	cp $(DEBOUT)/peagen-fabric_$(VERSION)_*.deb $(DIST)/
	@ls -l $(DIST)/peagen-fabric_$(VERSION)_*.deb

# --nodeps: BuildRequires always fail on Debian (empty rpm database).
# Keep them right in the spec for real RPM hosts.
RPMBUILD_NODEPS ?= $(if $(wildcard /etc/debian_version),--nodeps,)
rpm: vendor sbom
	rm -rf $(STAGE)/rpm && mkdir -p $(STAGE)/rpm $(DIST)
	rpmbuild -bb $(RPMBUILD_NODEPS) --build-in-place \
	  --define '_topdir $(STAGE)/rpm' --define 'peagen_version $(VERSION)' \
	  rpm/peagen-fabric.spec
	cp $(STAGE)/rpm/RPMS/*/peagen-fabric-$(VERSION)-*.rpm $(DIST)/
	@ls -l $(DIST)/peagen-fabric-$(VERSION)-*.rpm

packages: deb rpm

# CycloneDX SBOM of the shipped binaries: every crate they are built from
# (Cargo.lock, host target, no dev-dependencies). debian/rules and the rpm spec
# call this target with their own SBOM_OUT. cargo-cyclonedx runs `cargo
# metadata` without our --config flags, so with vendor/ present the offline
# source replacement comes from a config file in its working directory.
SBOM_OUT ?= $(DIST)/peagen-fabric-$(VERSION).cdx.json
SBOM_TMP := $(CURDIR)/target/sbom
sbom:
	@cargo --list 2>/dev/null | grep -qE '^ +cyclonedx( |$$)' || \
	  { echo "cargo-cyclonedx missing: run scripts/install-supply-chain-tools.sh" >&2; exit 1; }
	rm -rf $(SBOM_TMP) && mkdir -p $(SBOM_TMP)/.cargo $(dir $(SBOM_OUT))
	if [ -d vendor ]; then printf '%s\n' '[net]' 'offline = true' '[source.crates-io]' \
	  'replace-with = "vendored-sources"' '[source.vendored-sources]' \
	  'directory = "$(CURDIR)/vendor"' > $(SBOM_TMP)/.cargo/config.toml; fi
	cd $(SBOM_TMP) && cargo cyclonedx -q --manifest-path $(CURDIR)/Cargo.toml --format json \
	  --all --spec-version 1.5 --override-filename peagen-fabric.cdx
	mv $(CURDIR)/peagen-fabric.cdx.json $(SBOM_OUT)
	@echo "SBOM: $(SBOM_OUT)"

check:
	scripts/check-units.sh
	scripts/check-promtool.sh
	scripts/check-packages.sh

clean-dist:
	rm -rf $(DIST)
