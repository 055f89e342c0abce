#!/usr/bin/env bash
# Regenerates the signature fixtures of `signature.rs`'s tests (run once, commit the output):
#   trusted.gpg        public key of "berth test archive key" (binary keyring, as gpgv reads)
#   Release            a small Release file
#   InRelease          Release clearsigned by the trusted key
#   Release.gpg        Release's detached signature by the trusted key
#   InRelease.unknown  Release clearsigned by another key, not in trusted.gpg
# Needs gpg (Debian: apt-get install gpg). Keys live in a throw-away GNUPGHOME.
set -euo pipefail
cd "$(dirname "$0")"
export GNUPGHOME
GNUPGHOME="$(mktemp -d)"
trap 'gpgconf --kill all; rm -rf "$GNUPGHOME"' EXIT
gen() { gpg --batch --quiet --passphrase '' --quick-gen-key "$1" ed25519 sign never; }
gen "berth test archive key <test@berth.invalid>"
gen "berth unknown key <unknown@berth.invalid>"
cat > Release <<'REL'
Origin: Debian
Label: Debian
Suite: stable
Codename: bookworm
Architectures: amd64
Components: main
Description: berth test fixture
SHA256:
 5f6a3b1c0e2d4f8a9b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a 1234 main/binary-amd64/Packages.xz
REL
gpg --batch --yes --export "test@berth.invalid" > trusted.gpg
gpg --batch --yes --local-user "test@berth.invalid" --clearsign --output InRelease Release
gpg --batch --yes --local-user "test@berth.invalid" --detach-sign --output Release.gpg Release
gpg --batch --yes --local-user "unknown@berth.invalid" --clearsign --output InRelease.unknown Release
