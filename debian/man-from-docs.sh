#!/bin/sh
# Make hostctl.toml(5) and treefile(5) from the user docs with pandoc, so that
# one text (docs/agent.md's configuration part, docs/treefile.md) says what
# both the docs and the man pages say.
#
# usage: debian/man-from-docs.sh OUTDIR VERSION   (run from the source tree)
set -eu
out=$1
version=$2
mkdir -p "$out"
# Reproducible: the date of debian/changelog's entry, which
# dpkg-buildpackage exports; none otherwise.
date=
if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
  date=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)
fi

# Print the part of a Markdown file under the level-2 heading $2 (up to the
# next level-2 heading), or with $2 empty the whole file but its title, with
# every heading one level up: in a man page, level 1 is a section (.SH) and
# level 2 a subsection (.SS). Lines in code blocks are never headings.
part() {
  awk -v want="$2" '
    /^```/ { fence = !fence }
    !fence && /^# / && want == "" { next }
    !fence && /^## / {
      if (want != "") {
        if (on) exit
        if ($0 == "## " want) { on = 1; next }
      }
    }
    want == "" { on = 1 }
    on { if (!fence && /^##/) sub(/^#/, ""); print }
  ' "$1"
}

# page NAME SECTION ONE-LINE-SUMMARY SEE-ALSO; the body on standard input.
page() {
  {
    printf '# NAME\n\n%s - %s\n\n# DESCRIPTION\n\n' "$1" "$3"
    cat
    printf '\n# SEE ALSO\n\n%s\n' "$4"
  } | pandoc --standalone --from markdown --to man \
      --lua-filter "$(dirname "$0")/man-tables.lua" \
      --metadata title="$1" --metadata section="$2" \
      --metadata header="hostctl manual" --metadata footer="hostctl $version" \
      --metadata date="$date" \
      --output "$out/$1.$2"
}

part docs/agent.md Configuration | page hostctl.toml 5 \
  "configuration of the hostctl update agent" \
  "hostctl-agent(8), hostctl-agent-run-once(8), hostctl-agent-reboot(8), /usr/share/doc/hostctl/agent.md"
part docs/treefile.md "" | page treefile 5 \
  "the TOML file that describes a host tree for hostctl compose tree" \
  "hostctl-compose-tree(8), hostctl-db-diff(8), mmdebstrap(1), dracut(8), /usr/share/doc/hostctl/treefile.md"
