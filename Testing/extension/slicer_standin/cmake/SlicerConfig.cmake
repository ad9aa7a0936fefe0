# STAND-IN for 3D Slicer's CMake package (NOT Slicer): lets CI run the extension's real CMake code.
# It defines the variables and macros an extension uses, checks their arguments (every listed
# file must exist, required metadata must be set) and records each call in
# ${CMAKE_BINARY_DIR}/slicer_stub_calls.txt for the test to read.
set(Slicer_FOUND TRUE)
set(_stub_dir "${CMAKE_CURRENT_LIST_DIR}")
set(Slicer_USE_FILE "${_stub_dir}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${_stub_dir}/SlicerExtensionGenerateConfig.cmake")
set(Slicer_EXTENSION_CPACK "${_stub_dir}/SlicerExtensionCPack.cmake")
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "lib/Slicer-5.10/qt-scripted-modules")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "${Slicer_QTSCRIPTEDMODULES_LIB_DIR}")
set(SLICER_STUB_RECORD "${CMAKE_BINARY_DIR}/slicer_stub_calls.txt")
file(WRITE "${SLICER_STUB_RECORD}" "")
