#!/bin/sh
# Install the Debian/Ubuntu packages a make target needs, and nothing else.
#
#   sh tools/system-deps.sh GROUP...      GROUP: venv (python3 -m venv works), demo, test
#
# Checks first; when something is missing: installs it with apt-get when run as root, through sudo
# when sudo exists, else stops at once (exit 1) printing the exact `apt-get install` line to run as
# root. PY names the Python that will build the virtual environment (default python3).
set -u
PY=${PY:-python3}
need=""
add() { case " $need " in *" $1 "*) ;; *) need="${need:+$need }$1" ;; esac; }

for group in "$@"; do
  case "$group" in
    venv)
      if ! command -v "$PY" >/dev/null 2>&1; then
        echo "system-deps: $PY not found: install Python 3.11 or newer (apt-get install python3)" >&2
        exit 1
      fi
      if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "system-deps: $PY is $("$PY" -V 2>&1); streamwatch needs Python 3.11 or newer (PY=python3.11 make …)" >&2
        exit 1
      fi
      # Debian splits ensurepip (which `python3 -m venv` needs) into the python3-venv package
      "$PY" -c 'import ensurepip, venv' 2>/dev/null || add python3-venv
      ;;
    demo)
      # the demo publishes its clip with the ffmpeg CLI; its captions are drawn in Noto Sans CJK
      command -v ffmpeg >/dev/null 2>&1 || add ffmpeg
      [ -d /usr/share/fonts/opentype/noto ] || add fonts-noto-cjk
      ;;
    test)
      command -v ffmpeg >/dev/null 2>&1 || add ffmpeg
      # a real RTMP/HLS server for the live tests
      command -v nginx >/dev/null 2>&1 || add nginx
      [ -f /usr/lib/nginx/modules/ngx_rtmp_module.so ] || add libnginx-mod-rtmp
      # the overlay page is tested in Debian's Chromium (driven by Playwright); CJK fonts for danmaku text
      command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || add chromium
      [ -d /usr/share/fonts/opentype/noto ] || add fonts-noto-cjk
      # int8 encoder variants are checked on an emulated AVX2-only CPU too (QEMU user mode, -cpu Haswell)
      command -v qemu-x86_64 >/dev/null 2>&1 || add qemu-user
      # the RTSP test's server: GStreamer's gst-rtsp-server, driven by the system python3 (python3-gi)
      if ! /usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0')" 2>/dev/null; then
        add gir1.2-gst-rtsp-server-1.0
        add gstreamer1.0-plugins-good
        add python3-gi
      fi
      ;;
    *)
      echo "system-deps: unknown group '$group' (venv, demo, test)" >&2
      exit 2
      ;;
  esac
done

[ -z "$need" ] && exit 0

line="apt-get install -y $need"
if [ "$(id -u)" = "0" ]; then
  sudo=""
elif command -v sudo >/dev/null 2>&1; then
  sudo="sudo"
else
  echo "system-deps: missing system packages: $need" >&2
  echo "system-deps: run this as root (there is no sudo here), then run make again:" >&2
  echo "" >&2
  echo "    apt-get update && $line" >&2
  echo "" >&2
  exit 1
fi

echo "system-deps: installing $need${sudo:+ (with sudo)}" >&2
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq || exit 1
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need || {
  echo "system-deps: apt-get failed; install by hand: $line" >&2
  exit 1
}
case " $need " in
  # the package starts nginx as a system service on port 80; tests start their own on 127.0.0.1
  *" nginx "*) $sudo systemctl disable --now nginx >/dev/null 2>&1 || $sudo service nginx stop >/dev/null 2>&1 || true ;;
esac
exit 0
