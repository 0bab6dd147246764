# Tokenizer libFuzzer targets. Include from tests/fuzz/CMakeLists.txt (after mixtral_fuzz_parsers):
#   include(${PROJECT_SOURCE_DIR}/tests/tokenizer/fuzz/fuzz.cmake)
set(tok_src ${PROJECT_SOURCE_DIR}/src/tokenizer)
add_library(mixtral_fuzz_tokenizer STATIC ${tok_src}/bpe.cpp ${tok_src}/chat.cpp ${tok_src}/jinja.cpp
                                          ${tok_src}/sources.cpp ${tok_src}/sp_model.cpp ${tok_src}/tokenizer.cpp)
target_include_directories(mixtral_fuzz_tokenizer PUBLIC ${PROJECT_SOURCE_DIR}/src ${PROJECT_SOURCE_DIR}/include)
target_compile_options(mixtral_fuzz_tokenizer PRIVATE ${MIXTRAL_WARNINGS} -fsanitize=fuzzer-no-link
                       ${MIXTRAL_FUZZ_SANITIZERS})
target_link_libraries(mixtral_fuzz_tokenizer PUBLIC mixtral_fuzz_parsers mixtral_sentencepiece
                      PRIVATE nlohmann_json::nlohmann_json)

foreach(target fuzz_sp_model fuzz_chat_template fuzz_tokenizer_encode)
  add_executable(${target} ${CMAKE_CURRENT_LIST_DIR}/${target}.cpp)
  target_compile_options(${target} PRIVATE ${MIXTRAL_WARNINGS} -fsanitize=fuzzer ${MIXTRAL_FUZZ_SANITIZERS})
  target_link_options(${target} PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_libraries(${target} PRIVATE mixtral_fuzz_tokenizer)
  string(REPLACE "fuzz_" "" corpus ${target})
  add_test(NAME ${target}_corpus COMMAND ${target} -runs=0 ${CMAKE_CURRENT_LIST_DIR}/corpus/${corpus})
endforeach()
