/**
 * Runs the propagation probe (../processes/propagation-probe.ts) inside a World and reads its
 * result. The probe itself registers and unregisters machines on machined's bus and polls the stub,
 * so every interval it reports is measured on one clock, in one process.
 */
import { join } from 'node:path';
import { z } from 'zod';
import type { World } from '../../test/support/world.js';
import { REPO } from './machine.js';

const Leader = z.object({
  pid: z.number().int(),
  ifindexes: z.array(z.number().int()),
  /** The link inside the leader's network namespace that gets the address. */
  inner: z.string(),
  /** The address the machine answers with, and its prefix length. */
  address: z.string(),
  prefix: z.number().int(),
});

export const ProbeOptions = z.object({
  bus: z.string(),
  dns: z.object({ host: z.string(), port: z.number().int() }),
  leaders: z.array(Leader).min(1),
  registrations: z.number().int().positive(),
  /**
   * `configured`: the leader's address exists before registration (measure register → answer).
   * `late`: only the link-local address exists at registration; the routable one is added
   * `lateDelaysMs[i]` after RegisterMachineWithNetwork returns (measure address added → answer).
   */
  scenario: z.enum(['configured', 'late']),
  lateDelaysMs: z.array(z.number()).default([]),
  namePrefix: z.string(),
});
export type ProbeOptions = z.input<typeof ProbeOptions>;

export const ProbeSample = z.object({
  name: z.string(),
  /** RegisterMachineWithNetwork round trip. */
  registerCallMs: z.number(),
  /** MachineNew seen on the bus by a passive listener, from the register call's return (may be < 0). */
  newSignalMs: z.number().nullable(),
  /** From the register call's return (`late`: from the address being added) to the first correct A answer. */
  firstAnswerMs: z.number(),
  /** `late` only: when the address was added, from the register call's return. */
  addressAddedMs: z.number(),
  answerPolls: z.number(),
  unregisterCallMs: z.number(),
  removedSignalMs: z.number().nullable(),
  /** From the unregister call's return to the first NXDOMAIN. */
  nxdomainMs: z.number(),
  /** Answers with the machine's address seen after the unregister call returned… */
  staleAnswers: z.number(),
  /** …and of those, answers to queries asked after a bus listener had seen MachineRemoved… */
  staleAfterSignal: z.number(),
  /** …the latest of which was asked this long after the listener saw it (0: none). */
  staleAfterSignalMs: z.number(),
});
export type ProbeSample = z.infer<typeof ProbeSample>;

const PROBE_JS = join(REPO, 'dist/bench/processes/propagation-probe.js');

export async function propagationProbe(world: World, options: ProbeOptions): Promise<ProbeSample[]> {
  const r = await world.exec(process.execPath, [PROBE_JS, JSON.stringify(options)], { timeoutMs: 1_800_000 });
  if (r.code !== 0) throw new Error(`propagation probe failed (${r.code ?? r.signal}): ${r.stderr}`);
  return z.array(ProbeSample).parse(JSON.parse(r.stdout));
}
