# Built with `node-gyp rebuild -C native` against the headers of the running
# Node.js (npm's nodedir setting), so nothing is downloaded.
{
  "targets": [
    {
      "target_name": "fileops",
      "sources": ["fileops.c", "nowait.c"],
      "defines": ["NAPI_VERSION=8"],
      "cflags_c": ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    }
  ]
}
