# scripts/embed-web.cmake: compiles the web UI (web/) into the binary. Run at build time
# by CMakeLists.txt (cmake -DWEB_DIR=... -DOUT=... -P scripts/embed-web.cmake); writes one
# C source holding every file under WEB_DIR as bytes, with its path, length and a strong
# ETag (the file's SHA-256), sorted by path for registry/web.c to look up. Hidden files
# (a name starting with ".") and editor leftovers ("~") are skipped; a path outside
# [A-Za-z0-9._/-] stops the build, since registry/web.c could never serve it.
# A missing WEB_DIR gives an empty table (the binary still builds; / answers 404).
cmake_minimum_required(VERSION 3.22)
if(NOT DEFINED WEB_DIR OR NOT DEFINED OUT)
  message(FATAL_ERROR "usage: cmake -DWEB_DIR=DIR -DOUT=FILE.c -P embed-web.cmake")
endif()

set(files "")
if(IS_DIRECTORY "${WEB_DIR}")
  file(GLOB_RECURSE files RELATIVE "${WEB_DIR}" "${WEB_DIR}/*")
  list(SORT files)
endif()

string(REPEAT "0x..," 16 sixteen) # CMake's regular expressions have no {n}
set(arrays "")
set(table "")
set(n 0)
foreach(rel IN LISTS files)
  if(rel MATCHES "(^|/)\\." OR rel MATCHES "~$")
    continue()
  endif()
  if(NOT rel MATCHES "^[A-Za-z0-9_/.-]+$")
    message(FATAL_ERROR "web/${rel}: only [A-Za-z0-9._/-] in names (the server could not serve it)")
  endif()
  file(READ "${WEB_DIR}/${rel}" hex HEX)
  file(SIZE "${WEB_DIR}/${rel}" size)
  file(SHA256 "${WEB_DIR}/${rel}" sha)
  if(size EQUAL 0)
    set(bytes "0")
  else()
    # 0xNN, bytes, 16 to a line
    string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
    string(REGEX REPLACE "(${sixteen})" "\\1\n    " bytes "${bytes}")
  endif()
  string(APPEND arrays "/* ${rel} */\nstatic const unsigned char f${n}[] = {\n    ${bytes}};\n")
  string(APPEND table "    {\"${rel}\", f${n}, ${size}, \"\\\"${sha}\\\"\"},\n")
  math(EXPR n "${n} + 1")
endforeach()
if(n EQUAL 0)
  set(table "    {NULL, NULL, 0, NULL},\n") # C has no empty arrays
endif()

file(WRITE "${OUT}.tmp" "/* Generated from web/ by scripts/embed-web.cmake at build time: do not edit. */
#include \"registry/server_internal.h\"

${arrays}
const srv_web_asset srv_web_assets[] = {
${table}};
const int srv_web_n_assets = ${n};
")
file(RENAME "${OUT}.tmp" "${OUT}")
