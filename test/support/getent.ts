/**
 * Reading `getent hosts|ahosts|ahostsv4|ahostsv6` output: what glibc's NSS resolved a name to.
 */

/** The addresses in getent's first column, each once, in the order glibc gave them. */
export function getentAddresses(stdout: string): string[] {
  return [
    ...new Set(
      stdout
        .split('\n')
        .filter(Boolean)
        .map((l) => l.split(/\s+/)[0] ?? ''),
    ),
  ];
}
