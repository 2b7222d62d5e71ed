// Decode one latent vector with vae-export's AOTInductor package and write the image, with no Python:
//
//     vae-export export runs/mlp/checkpoint.pt --out export --format aoti
//     ./build/decode export/decoder.aoti.pt2 digit.pgm 0.5 -1.2 ...   (one value per latent dimension)
//
// Writes binary PGM (grey) or PPM (RGB), pixels rounded half to even as vae-export's runtime does.
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <regex>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: " << argv[0] << " decoder.aoti.pt2 out.pgm|out.ppm z1 [z2 ...]\n";
    return 2;
  }
  try {
    torch::inductor::AOTIModelPackageLoader loader(argv[1]);
    // vae-export's metadata is a JSON object under "vae_export.json"; the latent size is all we need.
    std::smatch match;
    const std::string meta = loader.get_metadata()["vae_export.json"];
    if (meta.find("\"role\": \"decoder\"") == std::string::npos ||
        !std::regex_search(meta, match, std::regex("\"latent_dim\": (\\d+)"))) {
      std::cerr << "error: " << argv[1] << " is not a vae-export decoder (no latent_dim in its metadata)\n";
      return 1;
    }
    const long latent_dim = std::stol(match[1]);
    if (argc - 3 != latent_dim) {
      std::cerr << "error: the decoder takes " << latent_dim << " latent values, got " << argc - 3 << "\n";
      return 2;
    }
    std::vector<float> z;
    for (int i = 3; i < argc; ++i) z.push_back(std::stof(argv[i]));
    at::Tensor latent = at::from_blob(z.data(), {1, latent_dim}, at::kFloat);    // (1, latent_dim)
    at::Tensor sample = loader.run({latent})[0].contiguous();                      // (1, C, H, W) in [0, 1]
    const long channels = sample.size(1), height = sample.size(2), width = sample.size(3);
    const float* pixels = sample.data_ptr<float>();
    std::ofstream out(argv[2], std::ios::binary);
    out << (channels == 1 ? "P5" : "P6") << "\n" << width << " " << height << "\n255\n";
    for (long y = 0; y < height; ++y)
      for (long x = 0; x < width; ++x)
        for (long c = 0; c < channels; ++c) {   // channel-first in, interleaved out
          float v = pixels[(c * height + y) * width + x];
          out.put(static_cast<char>(std::nearbyint(std::fmin(std::fmax(v, 0.0f), 1.0f) * 255.0f)));
        }
    if (!out.flush()) {
      std::cerr << "error: could not write " << argv[2] << "\n";
      return 1;
    }
  } catch (const std::exception& e) {
    std::string what = e.what();
    std::cerr << "error: " << argv[1] << ": " << what.substr(0, what.find('\n')) << "\n";
    return 1;
  }
  return 0;
}
