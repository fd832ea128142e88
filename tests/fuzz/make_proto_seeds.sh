#!/bin/bash
# Writes the seed corpus of fuzz_manifest and fuzz_requests (protobuf
# messages, encoded with protoc from the text below; the results are
# committed). fuzz_requests inputs are one byte choosing the handler
# (see fuzz_requests.cc) followed by the request.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
enc() { protoc -I"$root/proto" --encode="zerocopy.v1.$1" zerocopy/v1/model_store.proto; }
m="$here/corpus/manifest"; r="$here/corpus/requests"
mkdir -p "$m" "$r"
manifest='storages { size: 4096 } storages { size: 100 }
tensors { name: "w" storage: 0 dtype: F32 shape: 32 shape: 32 }
tensors { name: "b" storage: 1 dtype: U8 shape: 100 }
format: "test" metadata: "x"'
echo "$manifest" | enc Manifest > "$m/two_storages"
echo 'storages { size: 64 } tensors { name: "t" storage: 0 byte_offset: 8 dtype: F16 shape: 4 shape: 3 strides: 1 strides: 4 }' | enc Manifest > "$m/strided"
echo 'storages { size: 0 } tensors { name: "e" storage: 0 dtype: F64 shape: 0 shape: 5 }' | enc Manifest > "$m/empty_tensor"
echo 'storages { size: 8 } tensors { name: "a" storage: 0 dtype: I64 } tensors { name: "a.view" storage: 0 dtype: I32 shape: 2 }' | enc Manifest > "$m/scalar_and_view"
seed() { { printf "\\x$(printf %02x "$2")"; enc "$3"; } > "$r/$1"; }
echo "manifest { $manifest } name: \"m\"" | seed create 0 CreateModelRequest
echo "manifest { $manifest } name: \"m\" pin: true" | seed create_pinned 0 CreateModelRequest
echo 'staging_id: "0123456789abcdef0123456789abcdef" digest: "0123456789abcdef0123456789abcdef"' | seed commit 1 CommitModelRequest
echo 'staging_id: "0123456789abcdef0123456789abcdef"' | seed abort 2 AbortModelRequest
echo 'model { ref: "m" } session_id: 1 lease: true' | seed get_lease 3 GetModelRequest
echo 'model { ref: "m" } session_id: 1 gpu_uuid: "GPU-00000000-0000-0000-0000-000000000000"' | seed get_gpu 3 GetModelRequest
echo 'session_id: 1 digest: "0123456789abcdef0123456789abcdef" gpu_uuid: "GPU-00000000-0000-0000-0000-000000000000"' | seed release_gpu 4 ReleaseModelRequest
echo 'model { ref: "m" } force: true' | seed delete 5 DeleteModelRequest
echo 'name: "alias" model { ref: "m" }' | seed tag 6 TagModelRequest
echo 'model { ref: "m" }' | seed pin 7 PinModelRequest
printf '\x09' > "$r/session_churn"
printf '\x0a' > "$r/list"
