# Homebrew formula for Pilot Protocol (Rust): builds from source.
#
#   brew install --build-from-source ./packaging/homebrew/pilot.rb
#   brew services start pilot          # the node daemon, as a user agent
#
# The URLs below are placeholders until the project has a public home.
# Release: `scripts/package.sh --source` writes target/package/pilot-VERSION.tar.gz
# and prints its sha256; publish it and put both below. The tarball has no
# .git, so the commit for `--version` comes from PILOT_GIT_COMMIT.
class Pilot < Formula
  desc "Overlay network for AI agents: addresses bound to keys, encrypted tunnels"
  homepage "https://github.com/pilot-protocol/pilot-rs"
  url "https://github.com/pilot-protocol/pilot-rs/releases/download/v0.1.0/pilot-0.1.0.tar.gz"
  sha256 "0000000000000000000000000000000000000000000000000000000000000000"
  license any_of: ["MIT", "Apache-2.0"]
  head "https://github.com/pilot-protocol/pilot-rs.git", branch: "main"

  depends_on "rust" => :build

  def install
    ENV["PILOT_GIT_COMMIT"] = build.head? ? Utils.git_short_head : "v#{version}"
    system "cargo", "install", *std_cargo_args
    generate_completions_from_executable(bin/"pilotctl", "completions")
    (etc/"pilot").mkpath
  end

  service do
    # `pilotctl daemon start --foreground` runs pilot-daemon with the
    # settings saved in ~/.pilot/config.json.
    run [opt_bin/"pilotctl", "daemon", "start", "--foreground"]
    keep_alive successful_exit: false
    log_path var/"log/pilot-daemon.log"
    error_log_path var/"log/pilot-daemon.log"
  end

  def caveats
    <<~EOS
      Point the node at a rendezvous server once, then start it as a service:
        pilotctl config set registry HOST:9000
        brew services start pilot
      Or run your own rendezvous: pilot-rendezvous
    EOS
  end

  test do
    assert_match version.to_s, shell_output("#{bin}/pilotctl --version")
    assert_match "registry", shell_output("#{bin}/pilot-rendezvous --help")
    assert_match "no daemon is running",
                 shell_output("#{bin}/pilotctl --socket #{testpath}/p.sock info 2>&1", 1)
  end
end
