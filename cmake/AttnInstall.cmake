# Install rules, the CMake package (attnConfig.cmake -> attn::attn), attn.pc and the Debian
# packages. Everything installed is relocatable: paths are relative to the installed files.
include(CMakePackageConfigHelpers)

set(ATTN_CMAKE_DIR "${CMAKE_INSTALL_LIBDIR}/cmake/attn")

install(TARGETS attn EXPORT attnTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT Runtime NAMELINK_COMPONENT Development
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT Development
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT Runtime)
install(FILES include/attn/attn.h include/attn/attn_mha.h include/attn/attn_kv_cache.h include/attn/attn_additive.h ${ATTN_GENERATED}/attn/attn_export.h
              ${ATTN_GENERATED}/attn/attn_version.h
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/attn COMPONENT Development)
install(EXPORT attnTargets NAMESPACE attn:: DESTINATION ${ATTN_CMAKE_DIR} COMPONENT Development)

if(BUILD_SHARED_LIBS)
  set(ATTN_CONFIG_STATIC OFF)
else()
  set(ATTN_CONFIG_STATIC ON)
endif()
configure_package_config_file(cmake/attnConfig.cmake.in
  ${PROJECT_BINARY_DIR}/attnConfig.cmake INSTALL_DESTINATION ${ATTN_CMAKE_DIR})
# 0.x: only the same minor version is compatible, as with the SONAME.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/attnConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/attnConfig.cmake ${PROJECT_BINARY_DIR}/attnConfigVersion.cmake
  DESTINATION ${ATTN_CMAKE_DIR} COMPONENT Development)

# pkg-config: prefix derived from the .pc file's own location.
set(ATTN_PC_DIR "${CMAKE_INSTALL_LIBDIR}/pkgconfig")
file(RELATIVE_PATH ATTN_PC_TO_PREFIX "/root/${ATTN_PC_DIR}" "/root")
string(REGEX REPLACE "/$" "" ATTN_PC_TO_PREFIX "${ATTN_PC_TO_PREFIX}")
set(ATTN_PC_LIBS_PRIVATE "")
foreach(_lib IN LISTS BLAS_LIBRARIES)
  if(_lib MATCHES "/lib([^/]+)\\.(so|a|dylib)[.0-9]*$")
    string(APPEND ATTN_PC_LIBS_PRIVATE " -l${CMAKE_MATCH_1}")
  elseif(_lib MATCHES "^-")
    string(APPEND ATTN_PC_LIBS_PRIVATE " ${_lib}")
  endif()
endforeach()
string(APPEND ATTN_PC_LIBS_PRIVATE " -lpthread")
foreach(_lib IN LISTS CMAKE_DL_LIBS)
  string(APPEND ATTN_PC_LIBS_PRIVATE " -l${_lib}")
endforeach()
string(APPEND ATTN_PC_LIBS_PRIVATE " -lm")
string(STRIP "${ATTN_PC_LIBS_PRIVATE}" ATTN_PC_LIBS_PRIVATE)
configure_file(cmake/attn.pc.in ${PROJECT_BINARY_DIR}/attn.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/attn.pc DESTINATION ${ATTN_PC_DIR} COMPONENT Development)

# ---- Debian packages: libattn<major.minor> (the library) and libattn-dev (headers, CMake
# package, pkg-config file, the libattn.so link, the attn tool and its man page). `cpack -G DEB`
# in a build configured with -DCMAKE_INSTALL_PREFIX=/usr.
set(CPACK_PACKAGE_NAME "libattn")
set(CPACK_PACKAGE_VENDOR "The libattn authors")
set(CPACK_PACKAGE_CONTACT "The libattn authors <libattn@users.noreply.github.com>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "${PROJECT_DESCRIPTION}")
set(CPACK_PACKAGE_VERSION "${PROJECT_VERSION}")
set(CPACK_RESOURCE_FILE_LICENSE "${PROJECT_SOURCE_DIR}/LICENSE")
set(CPACK_GENERATOR "DEB;TGZ")
set(CPACK_COMPONENTS_ALL Runtime Development)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION "libs")
set(CPACK_DEBIAN_RUNTIME_PACKAGE_NAME "libattn${PROJECT_VERSION_MAJOR}.${PROJECT_VERSION_MINOR}")
set(CPACK_DEBIAN_DEVELOPMENT_PACKAGE_NAME "libattn-dev")
set(CPACK_DEBIAN_DEVELOPMENT_PACKAGE_SECTION "libdevel")
set(CPACK_DEBIAN_DEVELOPMENT_PACKAGE_DEPENDS
    "${CPACK_DEBIAN_RUNTIME_PACKAGE_NAME} (= ${PROJECT_VERSION})")
find_program(ATTN_DPKG_SHLIBDEPS dpkg-shlibdeps)
if(ATTN_DPKG_SHLIBDEPS)
  set(CPACK_DEBIAN_RUNTIME_PACKAGE_SHLIBDEPS ON) # libc6, libopenblas0 | libblas3, ...
else()
  set(CPACK_DEBIAN_RUNTIME_PACKAGE_DEPENDS "libc6, libopenblas0 | libblas3")
endif()
set(CPACK_COMPONENT_RUNTIME_DESCRIPTION "libattn shared library")
set(CPACK_COMPONENT_DEVELOPMENT_DESCRIPTION
    "libattn headers, CMake package (find_package(attn)), pkg-config file and the attn tool")
include(CPack)
