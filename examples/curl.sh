#!/bin/sh
# The common requests to a running asrv, made with curl.
#
#   asrv --root /tmp/files --log /tmp/audit.log --host 127.0.0.1 8080 &
#   sh examples/curl.sh 8080
#
# Each step prints what it does, then the response (status line and headers with -i, or the
# body and the status code). The audit log then holds one line per request:
#   PUT,/hello.txt,201,curl-1   GET,/hello.txt,200,curl-2   GET,/missing.txt,404,curl-3
#   PUT,/hello.txt,200,curl-4   GET,/hello.txt,200,curl-5
set -eu

port=${1:?usage: curl.sh PORT}
url="http://127.0.0.1:$port"

# -q (first): ignore ~/.curlrc; --noproxy '*': talk to the server itself even when a proxy
# is configured in the environment.
request() {
    curl -q --silent --show-error --noproxy '*' "$@"
}

body=$(mktemp)
trap 'rm -f "$body"' EXIT
printf 'hello from curl\n' >"$body"

echo '== PUT a new file: 201 Created'
# --upload-file (-T) sends a PUT; curl adds Expect: 100-continue to larger bodies by itself,
# and asrv answers 100 Continue before reading the body.
request -i --upload-file "$body" -H 'Expect: 100-continue' -H 'Request-Id: curl-1' \
    "$url/hello.txt"

echo '== GET it back: 200 OK'
request -w '%{http_code}\n' -H 'Request-Id: curl-2' "$url/hello.txt"

echo '== GET a file that does not exist: 404 Not Found'
request -w '%{http_code}\n' -H 'Request-Id: curl-3' "$url/missing.txt"

echo '== PUT again: the file is replaced, 200 OK'
printf 'replaced\n' >"$body"
request -w '%{http_code}\n' -T "$body" -H 'Request-Id: curl-4' "$url/hello.txt"

echo '== GET with Connection: close: the response says Connection: close too'
request -i -H 'Connection: close' -H 'Request-Id: curl-5' "$url/hello.txt"
