#!/bin/bash
# The Nginx the tests and benchmarks run: Debian 13's nginx and njs module (njs >= 0.8, like the
# pinned image's, for js_shared_dict_zone) unpacked into DEST with the C library they were built
# against, started through that library's loader, so nothing of the host's system changes.
# Debian 12's own njs is 0.7.9. Needs apt-get, dpkg and Debian's archive keyring (Debian 12+; packages and loader of the host's architecture).
#   bash tools/install_test_nginx.sh .tools/nginx   ->  .tools/nginx/bin/nginx
set -euo pipefail
dest=$(realpath -m "${1:?usage: install_test_nginx.sh DEST}")
suite=trixie
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs"
echo "deb http://deb.debian.org/debian $suite main" > "$work/sources.list"
apt=(-o Dir::Etc::SourceList="$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
     -o Dir::State::Lists="$work/lists" -o Dir::Cache="$work/cache" -o APT::Sandbox::User=root)
apt-get "${apt[@]}" -qq update
# nginx and the njs module, and every library either loads (the host's are older than they need).
(cd "$work/debs" && apt-get "${apt[@]}" -qq download nginx libnginx-mod-http-js \
   libc6 libcrypt1 libpcre2-8-0 libssl3t64 libzstd1 zlib1g libxml2 liblzma5)
rm -rf "$dest.new"
mkdir -p "$dest.new/bin"
for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$dest.new/root"; done
# What the benchmarks name: "<package> <Debian version>" per line.
for pkg in nginx libnginx-mod-http-js; do
  echo "$pkg $(dpkg-deb -f "$work"/debs/"${pkg}"_*.deb Version)"
done > "$dest.new/VERSIONS"
loader=$(cd "$dest.new/root" && ls usr/lib/*/ld-linux*.so.* | head -1)
libs=$(dirname "$loader")
cat > "$dest.new/bin/nginx" <<SH
#!/bin/sh
# Debian $suite's nginx on its own C library (tools/install_test_nginx.sh).
root="\$(dirname "\$(dirname "\$(readlink -f "\$0")")")/root"
exec "\$root/$loader" --argv0 nginx --library-path "\$root/$libs" "\$root/usr/sbin/nginx" "\$@"
SH
chmod +x "$dest.new/bin/nginx"
"$dest.new/bin/nginx" -v
test -f "$dest.new/root/usr/lib/nginx/modules/ngx_http_js_module.so"
rm -rf "$dest"
mv "$dest.new" "$dest"
