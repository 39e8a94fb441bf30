# test_git_revision.cmake (cmake -P, with -DWORK=<a scratch folder>): the build's name for its
# sources (cmake/git_revision.cmake) on a throwaway git repository:
#   - a clean tree is its commit; a changed source is "<commit>-dirty.<8 hex>";
#   - two different changes of one commit have different names; the same change has the same
#     name again, staged or not, with an untracked file beside it, and under other git settings
#     (prefixes, context, abbreviation, renames, colour);
#   - a change outside the program's sources (docs) leaves the commit's name; undone, the commit.
cmake_minimum_required(VERSION 3.25)
find_package(Git QUIET)
if(NOT GIT_FOUND)
  message(FATAL_ERROR "no git here (tests/CMakeLists.txt registers this test only where git is)")
endif()
# sealed off from a git that runs this (ctest from a hook exports these) and from hooks and templates
foreach(v GIT_DIR GIT_WORK_TREE GIT_INDEX_FILE GIT_OBJECT_DIRECTORY GIT_COMMON_DIR GIT_CONFIG_PARAMETERS)
  unset(ENV{${v}})
endforeach()
set(script ${CMAKE_CURRENT_LIST_DIR}/../../cmake/git_revision.cmake)
set(repo ${WORK}/repo)
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${repo}/src)
function(git)
  execute_process(COMMAND "${GIT_EXECUTABLE}" -C ${repo} -c user.name=test -c user.email=test@example.org
                          -c commit.gpgsign=false -c core.hooksPath=/dev/null ${ARGN}
                  RESULT_VARIABLE rc OUTPUT_QUIET ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "git ${ARGN}: ${err}")
  endif()
endfunction()
# the revision the script writes for the repository as it is now
function(revision out)
  execute_process(COMMAND ${CMAKE_COMMAND} -DOUT=${WORK}/rev.cpp -DDIR=${repo} -P ${script}
                  RESULT_VARIABLE rc)
  file(READ ${WORK}/rev.cpp text)
  if(NOT rc EQUAL 0 OR NOT text MATCHES "return \"([^\"]*)\"")
    message(FATAL_ERROR "the script failed or wrote no revision: ${text}")
  endif()
  set(${out} "${CMAKE_MATCH_1}" PARENT_SCOPE)
endfunction()
function(expect_same what got want)
  if(NOT got STREQUAL want)
    message(SEND_ERROR "${what}: '${got}', expected '${want}'")
  endif()
endfunction()

git(init -q --template=)
file(WRITE ${repo}/src/a.cpp "one\n")
file(WRITE ${repo}/src/b.cpp "unchanged\n")
file(WRITE ${repo}/README.md "docs\n")
git(add src/a.cpp src/b.cpp README.md)
git(commit -q --no-verify -m first)
execute_process(COMMAND "${GIT_EXECUTABLE}" -C ${repo} rev-parse --short=12 HEAD
                OUTPUT_VARIABLE head OUTPUT_STRIP_TRAILING_WHITESPACE)

revision(clean)
expect_same("clean tree" "${clean}" "${head}")

file(WRITE ${repo}/src/a.cpp "two\n")
revision(change1)
file(WRITE ${repo}/src/a.cpp "three\n")
revision(change2)
foreach(r change1 change2)
  if(NOT ${r} MATCHES "^${head}-dirty\\.[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]$")
    message(SEND_ERROR "${r}: '${${r}}' is not '${head}-dirty.' and 8 hex digits")
  endif()
endforeach()
if(change1 STREQUAL change2)
  message(SEND_ERROR "two different changes of one commit have one name: '${change1}'")
endif()

file(WRITE ${repo}/src/a.cpp "two\n")
revision(again)
expect_same("the same change again" "${again}" "${change1}")
git(add src/a.cpp)
revision(staged)
expect_same("the same change, staged" "${staged}" "${change1}")
file(WRITE ${repo}/src/untracked.cpp "not in git\n")
revision(untracked)
expect_same("the same change beside an untracked file" "${untracked}" "${change1}")
# the user's settings (here the repository's own config) do not rename a change
foreach(setting "diff.noprefix true" "diff.mnemonicPrefix true" "diff.context 1" "core.abbrev 20"
                "diff.renames false" "color.ui always" "diff.algorithm patience")
  separate_arguments(kv UNIX_COMMAND "${setting}")
  git(config ${kv})
endforeach()
revision(settings)
expect_same("the same change under other git settings" "${settings}" "${change1}")

file(WRITE ${repo}/src/a.cpp "one\n")
git(add src/a.cpp)
file(WRITE ${repo}/README.md "other docs\n")
revision(docs)
expect_same("a change of the docs alone" "${docs}" "${head}")
file(WRITE ${repo}/README.md "docs\n")
revision(back)
expect_same("every change undone" "${back}" "${head}")
message(STATUS "clean ${clean}; changes ${change1}, ${change2}")
file(REMOVE_RECURSE ${WORK})
