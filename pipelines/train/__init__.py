"""Ray Train jobs: BeautifulPrompt's SFT, reward-model and PPO stages."""
