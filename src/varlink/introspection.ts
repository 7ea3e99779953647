/**
 * `org.varlink.service`, which every Varlink service provides: GetInfo and GetInterfaceDescription.
 *
 * systemd 252 does not implement them (GetInfo → MethodNotImplemented, GetInterfaceDescription →
 * MethodNotFound, reference §4.6); we do, as systemd ≥ 256 does, because varlinkctl and other
 * generic clients start with them. Listed in DIFFERENCES_FROM_MACHINED.
 */
import { z } from 'zod';
import { method, type VarlinkInterface } from './interface.js';
import { parameters } from './parameters.js';
import { VarlinkErrors } from './protocol.js';

/** The interface text as published on varlink.org. */
export const ORG_VARLINK_SERVICE_IDL = `# The Varlink Service Interface is provided by every varlink service. It
# describes the service and the interfaces it implements.
interface org.varlink.service

# Get a list of all the interfaces a service provides and information
# about the implementation.
method GetInfo() -> (
  vendor: string,
  product: string,
  version: string,
  url: string,
  interfaces: []string
)

# Get the description of an interface that is implemented by this service.
method GetInterfaceDescription(interface: string) -> (description: string)

# The requested interface was not found.
error InterfaceNotFound (interface: string)

# The requested method was not found
error MethodNotFound (method: string)

# The interface defines the requested method, but the service does not
# implement it.
error MethodNotImplemented (method: string)

# One of the passed parameters is invalid.
error InvalidParameter (parameter: string)

# Client is denied access
error PermissionDenied ()

# Method is expected to be called with 'more' set to true, but wasn't
error ExpectedMore ()
`;

export interface ServiceInfo {
  readonly vendor: string;
  readonly product: string;
  readonly version: string;
  readonly url: string;
}

/** The catalogue the server keeps: interface name → description text. */
export interface InterfaceCatalogue {
  names(): readonly string[];
  description(name: string): string | undefined;
}

export function orgVarlinkService(info: ServiceInfo, catalogue: InterfaceCatalogue): VarlinkInterface {
  return {
    name: 'org.varlink.service',
    description: ORG_VARLINK_SERVICE_IDL,
    methods: {
      'org.varlink.service.GetInfo': method(parameters({}), () => ({
        parameters: { ...info, interfaces: [...catalogue.names()].sort() },
      })),
      'org.varlink.service.GetInterfaceDescription': method(
        parameters({ interface: z.string() }),
        ({ interface: name }) => {
          const description = catalogue.description(name);
          return description === undefined
            ? { error: VarlinkErrors.InterfaceNotFound, parameters: { interface: name } }
            : { parameters: { description } };
        },
      ),
    },
  };
}
