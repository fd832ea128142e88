# Install rules and the Debian packages built from them.
#
#   cmake --install build --prefix /usr        what a package would hold
#   make deb                                   build/zerocopy_<v>_amd64.deb
#                                              build/zerocopy-dev_<v>_amd64.deb
#
# Two components, one package each:
# - runtime (zerocopy): zerocopyd, the `zerocopy` CLI, the systemd units
#   (the service and the huge-page tmpfs it wants), sysusers and tmpfiles
#   entries, /etc/zerocopy/zerocopyd.toml and /etc/default/zerocopyd as
#   conffiles; maintainer scripts in deploy/debian.
# - dev (zerocopy-dev): the C++ client's headers, its static libraries and
#   a CMake package (find_package(zerocopy) -> zerocopy::zerocopy).
# zerocopy-torchscript (the CLI built with LibTorch, for TorchScript
# archives) is its own component and in no package: LibTorch comes from a
# venv's torch here, and nothing in a package may point into a venv.

set(ZEROCOPY_DEB_DIR ${CMAKE_CURRENT_SOURCE_DIR}/deploy/debian)

# --- the node (component runtime) ---
install(FILES deploy/zerocopyd.service deploy/dev-shm-zerocopy.mount
        DESTINATION lib/systemd/system COMPONENT runtime)
install(FILES deploy/zerocopy.sysusers.conf DESTINATION lib/sysusers.d RENAME zerocopy.conf COMPONENT runtime)
install(FILES deploy/zerocopy.tmpfiles.conf DESTINATION lib/tmpfiles.d RENAME zerocopy.conf COMPONENT runtime)
# Absolute: /etc whatever the prefix (conffiles in the package).
install(FILES config/zerocopyd.toml DESTINATION /etc/zerocopy COMPONENT runtime)
install(FILES deploy/zerocopyd.default DESTINATION /etc/default RENAME zerocopyd COMPONENT runtime)

# --- C++ users (component dev) ---
install(TARGETS zerocopy zerocopy_common zerocopy_formats zerocopy_proto EXPORT zerocopyTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT dev)
# The LibTorch adapter's headers go with a LibTorch build, not here.
foreach(dir client/cpp/include common/include formats/include)
  install(DIRECTORY ${dir}/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} COMPONENT dev
          PATTERN "torch.h" EXCLUDE PATTERN "torch_formats.h" EXCLUDE)
endforeach()
install(FILES ${CMAKE_BINARY_DIR}/proto/gen/zerocopy/v1/model_store.pb.h
              ${CMAKE_BINARY_DIR}/proto/gen/zerocopy/v1/model_store.grpc.pb.h
              proto/zerocopy/v1/model_store.proto
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/zerocopy/v1 COMPONENT dev)
include(CMakePackageConfigHelpers)
set(ZEROCOPY_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/zerocopy)
install(EXPORT zerocopyTargets NAMESPACE zerocopy:: DESTINATION ${ZEROCOPY_CMAKE_DIR} COMPONENT dev)
configure_package_config_file(cmake/zerocopyConfig.cmake.in ${CMAKE_BINARY_DIR}/zerocopyConfig.cmake
                              INSTALL_DESTINATION ${ZEROCOPY_CMAKE_DIR})
write_basic_package_version_file(${CMAKE_BINARY_DIR}/zerocopyConfigVersion.cmake COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/zerocopyConfig.cmake ${CMAKE_BINARY_DIR}/zerocopyConfigVersion.cmake
        DESTINATION ${ZEROCOPY_CMAKE_DIR} COMPONENT dev)

# --- both: Debian's copyright and changelog (compressed as dh does: -9n) ---
execute_process(COMMAND gzip -9nc ${ZEROCOPY_DEB_DIR}/changelog
                OUTPUT_FILE ${CMAKE_BINARY_DIR}/changelog.gz COMMAND_ERROR_IS_FATAL ANY)
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${ZEROCOPY_DEB_DIR}/changelog)
foreach(component runtime dev)
  set(package zerocopy)
  if(component STREQUAL dev)
    set(package zerocopy-dev)
  endif()
  install(FILES ${ZEROCOPY_DEB_DIR}/copyright ${CMAKE_BINARY_DIR}/changelog.gz
          DESTINATION ${CMAKE_INSTALL_DATADIR}/doc/${package} COMPONENT ${component})
  install(FILES ${ZEROCOPY_DEB_DIR}/${package}.lintian-overrides
          DESTINATION ${CMAKE_INSTALL_DATADIR}/lintian/overrides RENAME ${package} COMPONENT ${component})
endforeach()

# --- CPack: `make deb` (cpack -G DEB in the build directory) ---
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME zerocopy)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "zerocopy maintainers <zerocopy-maintainers@lists.zerocopy.dev>")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES TRUE)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_ALL runtime dev)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_HOMEPAGE "https://zerocopy.dev")
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS OFF)

set(CPACK_DEBIAN_RUNTIME_PACKAGE_NAME zerocopy)
set(CPACK_DEBIAN_RUNTIME_PACKAGE_SECTION admin)
# The libraries come from dpkg-shlibdeps; systemd for sysusers, tmpfiles
# and the unit (the postinst uses all three).
set(CPACK_DEBIAN_RUNTIME_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_RUNTIME_PACKAGE_DEPENDS "systemd")
set(CPACK_DEBIAN_RUNTIME_DESCRIPTION "share model weights between processes on a node
zerocopyd keeps one copy of each model's weights in shared memory per node
and one per GPU; processes (Ray actors and tasks, servers) map them in
milliseconds instead of loading their own. The `zerocopy` command preloads
safetensors and torch.save checkpoints, lists, pins and deletes models, and
checks a node's set-up (`zerocopy doctor`).")
set(CPACK_DEBIAN_RUNTIME_PACKAGE_CONTROL_EXTRA
    ${ZEROCOPY_DEB_DIR}/postinst ${ZEROCOPY_DEB_DIR}/prerm ${ZEROCOPY_DEB_DIR}/postrm ${ZEROCOPY_DEB_DIR}/conffiles)
set(CPACK_DEBIAN_RUNTIME_PACKAGE_CONTROL_STRICT_PERMISSION TRUE)

set(CPACK_DEBIAN_DEV_PACKAGE_NAME zerocopy-dev)
set(CPACK_DEBIAN_DEV_PACKAGE_SECTION libdevel)
set(CPACK_DEBIAN_DEV_PACKAGE_DEPENDS
    "libgrpc++-dev, libprotobuf-dev, protobuf-compiler-grpc, libabsl-dev, libspdlog-dev, libdlpack-dev, libxxhash-dev, nlohmann-json3-dev")
set(CPACK_DEBIAN_DEV_DESCRIPTION "C++ client library for zerocopyd (development files)
Headers, static libraries and a CMake package (find_package(zerocopy),
target zerocopy::zerocopy) for programs that publish models to zerocopyd
or map them: tensors as pointers and DLPack, shared with every other
process on the node.")

include(CPack)
