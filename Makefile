# Packaging entry points (issue 5). Output in dist/.
#   make vendor    cargo vendor --locked vendor (needs the crates.io registry once)
#   make deb       dist/peagen-fabric_<version>_<arch>.deb   (dpkg-buildpackage)
#   make rpm       dist/peagen-fabric-<version>-1.<arch>.rpm (rpmbuild)
#   make packages  both
#   make check     scripts/check-units.sh, check-promtool.sh, check-packages.sh
# The builds run offline from vendor/ with the cargo on PATH (rustup; Debian's
# rustc is too old). Set CARGO_TARGET_DIR to reuse a build directory.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
DIST    := $(CURDIR)/dist
STAGE   := $(DIST)/.build
SHELL   := /bin/sh

.PHONY: all vendor deb rpm packages check clean-dist
all: packages

vendor:
	cargo vendor --locked vendor > /dev/null

# Built in place (so deb and rpm share one cargo build); dpkg-buildpackage's
# outputs are redirected from ../ into dist/.build/deb.
DEBOUT := $(STAGE)/deb
deb: vendor
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
rpm: vendor
	rm -rf $(STAGE)/rpm && mkdir -p $(STAGE)/rpm $(DIST)
	rpmbuild -bb $(RPMBUILD_NODEPS) --build-in-place \
	  --define '_topdir $(STAGE)/rpm' --define 'peagen_version $(VERSION)' \
	  rpm/peagen-fabric.spec
	cp $(STAGE)/rpm/RPMS/*/peagen-fabric-$(VERSION)-*.rpm $(DIST)/
	@ls -l $(DIST)/peagen-fabric-$(VERSION)-*.rpm

packages: deb rpm

check:
	scripts/check-units.sh
	scripts/check-promtool.sh
	scripts/check-packages.sh

clean-dist:
	rm -rf $(DIST)
